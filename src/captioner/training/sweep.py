"""Hyper-parameter sweeps as the seed notebook did by hand: a grid over training settings.

A sweep file (YAML) names a base training config, the data, an output folder and a grid::

    base: configs/ucm.yaml          # optional; any TrainConfig YAML
    manifest: runs/real/ucm.json
    features: runs/real/ucm-features
    out: runs/sweeps/ucm
    set: {epochs: 4}                # optional overrides shared by every run
    grid:
      batch_size: [32, 64]
      learning_rate: [0.001, 0.0005]
      train_images: [400, all]      # the seed's "image count": a seeded subset of train

Every combination trains in ``out/<name>/`` (its own TensorBoard folder, so
``tensorboard --logdir out`` shows the runs side by side); ``out/sweep.md`` and
``out/sweep.json`` compare them. A sweep started again skips finished runs and resumes the
interrupted one.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.data.manifest import Manifest
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_bytes, atomic_write_json, read_json_document
from captioner.training.checkpoint import has_training_state
from captioner.training.config import SHAPE_FIELDS, TrainConfig, read_yaml_mapping
from captioner.training.trainer import train

RESULT_FILE = "sweep_result.json"
RESULT_FORMAT = "captioner-sweep-result"
IMAGE_COUNT = "train_images"  # grid key handled by the sweep itself, not by TrainConfig


@dataclass
class SweepSpec:
    base: TrainConfig
    out: Path
    grid: dict[str, list[Any]]

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        data = read_yaml_mapping(path, "sweep file", "a mapping")
        unknown = sorted(set(data) - {"base", "manifest", "features", "out", "set", "grid"})
        if unknown:
            raise CaptionerError(f"{path}: unknown sweep keys: {', '.join(unknown)}")
        base = TrainConfig.from_yaml(data["base"]) if data.get("base") else TrainConfig()
        shared = dict(data.get("set") or {})
        for key in ("manifest", "features"):
            if data.get(key):
                shared[key] = str(data[key])
        base = base.override([f"{k}={v}" for k, v in shared.items()])
        grid = data.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise CaptionerError(f"{path}: 'grid' must map settings to lists of values")
        known = set(base.to_dict()) - {"model"} | {IMAGE_COUNT}
        known |= {f"model.{name}" for name in SHAPE_FIELDS}
        for key, values in grid.items():
            if key not in known:
                raise CaptionerError(f"{path}: unknown setting {key!r} in the grid")
            if not isinstance(values, list) or not values:
                raise CaptionerError(f"{path}: grid.{key} must be a non-empty list")
        if not base.manifest or not base.features:
            raise CaptionerError(f"{path}: the sweep needs 'manifest' and 'features'")
        return cls(base, Path(data.get("out") or "runs/sweep"), grid)

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())
        ]


def run_name(point: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in point.items())


def subset_manifest(manifest: Manifest, count: Any, seed: int) -> Manifest:
    """The manifest with ``count`` training images drawn at random (seeded); "all" keeps all."""
    train = manifest.split("train")
    if count == "all":
        return manifest
    if not isinstance(count, int) or count < 1:
        raise CaptionerError(f"{IMAGE_COUNT} must be a positive number or 'all', not {count!r}")
    keep = {r.file for r in random.Random(seed).sample(train, min(count, len(train)))}
    images = [r for r in manifest.images if r.split != "train" or r.file in keep]
    return Manifest(manifest.image_root, images, manifest.source, manifest.skipped)


def run_sweep(spec: SweepSpec, progress: bool = True) -> list[dict[str, Any]]:
    spec.out.mkdir(parents=True, exist_ok=True)
    rows = []
    points = spec.points()
    for index, point in enumerate(points, 1):
        name = run_name(point)
        run_dir = spec.out / name
        result_path = run_dir / RESULT_FILE
        if result_path.is_file():
            row = read_json_document(
                result_path, RESULT_FORMAT, None, "sweep result", missing="missing"
            )["row"]
            print(f"[{index}/{len(points)}] {name}: done before, kept", flush=True)
        else:
            print(f"[{index}/{len(points)}] {name}", flush=True)
            row = _train_point(spec, point, run_dir, progress)
            atomic_write_json(result_path, {"format": RESULT_FORMAT, "row": row})
        rows.append(row)
        _write_tables(spec, rows)
    return rows


def _train_point(
    spec: SweepSpec, point: dict[str, Any], run_dir: Path, progress: bool
) -> dict[str, Any]:
    settings = {k: v for k, v in point.items() if k != IMAGE_COUNT}
    config = spec.base.override([f"{k}={v}" for k, v in settings.items()])
    config.out = str(run_dir)
    config.progress = progress
    config.tags = {**config.tags, **{k: str(v) for k, v in point.items()}}
    if IMAGE_COUNT in point:
        manifest = subset_manifest(
            Manifest.load(Path(config.manifest)), point[IMAGE_COUNT], config.seed
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        config.manifest = str(run_dir / "manifest.json")
        if not Path(config.manifest).is_file():
            manifest.save(config.manifest)
    result = train(config, resume=has_training_state(run_dir / "checkpoint"))
    best = next(r for r in result.history if r["epoch"] == result.best_epoch)
    seconds = sum(r.get("seconds", 0.0) for r in result.history)
    return {
        "run": run_dir.name,
        **point,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_loss": best["val_loss"],
        "val_BLEU-4": best.get("val_BLEU-4"),
        "val_CIDEr": best.get("val_CIDEr"),
        "select_on": result.select_on,
        "minutes": round(seconds / 60, 2),
    }


def _write_tables(spec: SweepSpec, rows: list[dict[str, Any]]) -> None:
    select_on = spec.base.select_on
    key = "val_loss" if select_on == "val_loss" else f"val_{select_on}"
    ordered = sorted(
        rows, key=lambda r: (r[key] is None, r[key] if select_on == "val_loss" else -(r[key] or 0))
    )
    atomic_write_json(spec.out / "sweep.json", {"select_on": select_on, "runs": ordered})
    columns = [*spec.grid, "best_epoch", "val_loss", "val_BLEU-4", "val_CIDEr", "minutes"]
    lines = [
        f"Sweep in {spec.out}, best first by {key}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in ordered:
        lines.append("| " + " | ".join(_cell(row.get(c), c) for c in columns) + " |")
    atomic_write_bytes(spec.out / "sweep.md", ("\n".join(lines) + "\n").encode("utf-8"))


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and column in ("val_loss", "learning_rate"):
        return f"{value:.4g}"
    if isinstance(value, float):
        return f"{value:.2f}" if column == "minutes" else f"{value:.1f}"
    return str(value)
