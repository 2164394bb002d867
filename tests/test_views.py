"""Flip/turn views: extracted beside the train split, drawn per caption and epoch in training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_features_extract import make_images, tiny_backbone
from test_training import tiny_config

from captioner.data.manifest import ImageRecord, Manifest
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.features.extract import extract_manifest, extract_split
from captioner.training.config import TrainConfig
from captioner.training.trainer import train
from captioner.vision import backbones
from captioner.vision.views import DIHEDRAL, ViewTransform, parse_views


def test_views_are_named_and_checked() -> None:
    assert parse_views("hflip, rot90") == ["hflip", "rot90"]
    assert parse_views("dihedral") == list(DIHEDRAL) and len(DIHEDRAL) == 7
    with pytest.raises(CaptionerError, match="unknown view.*spin"):
        parse_views("hflip,spin")
    with pytest.raises(CaptionerError, match="twice"):
        parse_views(["rot90", "rot90"])
    with pytest.raises(CaptionerError, match="unknown view"):
        TrainConfig(views=["upside"])
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    turned = np.asarray(ViewTransform("rot90")(Image.fromarray(pixels)))
    assert (turned == np.rot90(pixels)).all()


def test_extraction_caches_each_view_of_the_train_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = make_images(tmp_path / "images", n=6, bad=())
    manifest = Manifest(
        tmp_path / "images",
        [
            ImageRecord(name, "train" if i < 4 else "val", ["x"])
            for i, (name, _) in enumerate(records)
        ],
        {"format": "test"},
        {},
    )
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: tiny_backbone())
    monkeypatch.setattr("captioner.features.extract.load_backbone", lambda *a, **k: tiny_backbone())
    out = tmp_path / "features"
    reports = extract_manifest(manifest, out, views=["hflip"], num_workers=0, progress=False)
    assert sorted(reports) == ["train", "train@hflip", "val"]
    assert not (out / "val@hflip").exists()
    view = FeatureCache.open(out / "train@hflip")
    assert view.header["view"] == "hflip" and view.keys == FeatureCache.open(out / "train").keys
    # the view's features are those of the flipped pictures
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    for name, path in records[:4]:
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped / name)
    extract_split(
        [(name, flipped / name) for name, _ in records[:4]],
        tmp_path / "direct",
        tiny_backbone(),
        num_workers=0,
        progress=False,
    )
    direct = FeatureCache.open(tmp_path / "direct")
    for row in range(4):
        np.testing.assert_array_equal(view.features(row), direct.features(row))
    assert not np.array_equal(view.features(0), FeatureCache.open(out / "train").features(0))


def _add_view(features: Path, view: str) -> None:
    """A view cache made by hand: the plain features with the regions reversed and halved
    (a decoder without region positions cannot tell a reversal alone)."""
    plain = FeatureCache.open(features / "train")
    header = {k: v for k, v in plain.header.items() if k not in ("keys", "shape", "dtype")}
    cache = FeatureCache.create(features / f"train@{view}", {**header, "view": view}, plain.keys)
    rows = np.arange(len(plain.keys))
    cache.write(rows, np.stack([np.asarray(plain.features(r))[::-1] * 0.5 for r in rows]))
    cache.flush()


def test_training_draws_views_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    plain = train(tiny_config(tmp_path / "plain", epochs=4))
    config = tiny_config(tmp_path / "views", epochs=4, views=["hflip", "rot90"])
    with pytest.raises(CaptionerError, match=r"train@hflip: no features of the 'hflip' view"):
        train(config)
    for view in ("hflip", "rot90"):
        _add_view(Path(config.features), view)
    whole = train(config)
    assert [h["train_loss"] for h in whole.history] != [h["train_loss"] for h in plain.history]
    assert [h["val_loss"] for h in whole.history] != [h["val_loss"] for h in plain.history]
    recorded = json.loads((Path(config.out) / "train_config.json").read_text())
    assert recorded["views"] == ["hflip", "rot90"]

    parts = dataclasses.replace(config, out=str(tmp_path / "parts"), epochs=2)
    train(parts)
    resumed = train(dataclasses.replace(parts, epochs=4), resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    from safetensors.torch import load_file

    a = load_file(str(whole.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CaptionerError, match="views"):
        train(dataclasses.replace(parts, epochs=5, views=["hflip"]), resume=True)
