"""Builders of tiny datasets with synthetic feature caches, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captioner.data.manifest import ImageRecord, Manifest
from captioner.features.cache import FeatureCache

HEADER = {
    "backbone": "synthetic",
    "weights_id": "test",
    "preprocessing": {"image_size": 8, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "grid": [2, 2],
    "channels": 8,
}

CAPTIONS = [
    "a red circle above a blue square",
    "a green triangle left of a red circle",
    "a blue square below a green triangle",
    "a small red square",
    "a large blue circle",
    "two green circles",
]


def write_tiny_dataset(root: Path, seed: int = 0) -> tuple[Path, Path, list[ImageRecord]]:
    """Six images with one distinct caption each; val reuses the same pictures' features."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(CAPTIONS), 4, 8)).astype(np.float16)
    records = [ImageRecord(f"img{i}.png", "train", [c]) for i, c in enumerate(CAPTIONS)]
    val = [ImageRecord(f"val{i}.png", "val", [c]) for i, c in enumerate(CAPTIONS)]
    manifest = Manifest(root / "images", records + val, {"format": "test"}, {})
    manifest_path = root / "manifest.json"
    manifest.save(manifest_path)
    for split, recs in (("train", records), ("val", val)):
        cache = FeatureCache.create(root / "features" / split, HEADER, [r.file for r in recs])
        cache.write(np.arange(len(recs)), feats)
        cache.flush()
    return manifest_path, root / "features", records


def train_tiny(manifest: Path, features: Path, out: Path, epochs: int, seed: int = 0) -> Path:
    """A few epochs of a small decoder on a tiny dataset; returns its model folder."""
    from captioner.caption.config import DecoderShape
    from captioner.training.config import TrainConfig
    from captioner.training.trainer import train

    config = TrainConfig(
        manifest=str(manifest),
        features=str(features),
        out=str(out),
        epochs=epochs,
        batch_size=6,
        model=DecoderShape(hidden_dim=32, attention_dim=16, embed_dim=16, encoder_dim=16),
        seed=seed,
        progress=False,
    )
    return train(config).model_dir


def split_command(
    command: str, models: Path | list[Path], manifest: Path, features: Path, split: str, *extra: str
) -> list[str]:
    """The arguments of a ``captioner`` command that reads a split's cached features
    (``evaluate``, ``report``): one model folder or several (an ensemble), then ``extra``."""
    folders = models if isinstance(models, list) else [models]
    return [
        command, "--model", *map(str, folders), "--manifest", str(manifest),
        "--features", str(features), "--split", split, *extra,
    ]  # fmt: skip
