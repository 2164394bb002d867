"""`captioner sweep`: a grid of real training runs, one comparison table, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from captioner.cli import main
from captioner.data.manifest import Manifest
from captioner.errors import CaptionerError
from captioner.training.sweep import SweepSpec, run_name, subset_manifest
from tests.tiny import write_tiny_dataset

BASE = {
    "epochs": 1,
    "model": {"hidden_dim": 16, "attention_dim": 8, "embed_dim": 8, "encoder_dim": 8},
    "progress": False,
}


def _write_spec(root: Path, grid: dict) -> Path:
    manifest, features, _ = write_tiny_dataset(root)
    (root / "base.yaml").write_text(yaml.safe_dump(BASE), encoding="utf-8")
    spec = {
        "base": str(root / "base.yaml"),
        "manifest": str(manifest),
        "features": str(features),
        "out": str(root / "sweep"),
        "set": {"seed": 3},
        "grid": grid,
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_sweep_trains_every_point_and_compares_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec_path = _write_spec(
        tmp_path, {"batch_size": [2, 6], "learning_rate": [0.01], "train_images": [3, "all"]}
    )
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    out = tmp_path / "sweep"
    table = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    runs = table["runs"]
    assert len(runs) == 4
    assert {(r["batch_size"], r["train_images"]) for r in runs} == {
        (2, 3),
        (2, "all"),
        (6, 3),
        (6, "all"),
    }
    losses = [r["val_loss"] for r in runs]
    assert losses == sorted(losses)  # best first by the selection metric
    for run in runs:
        run_dir = out / run["run"]
        assert (run_dir / "model" / "config.json").is_file()
        assert (run_dir / "tensorboard").is_dir()
        config = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))
        assert config["batch_size"] == run["batch_size"] and config["seed"] == 3
    subset = Manifest.load(
        out
        / run_name({"batch_size": 2, "learning_rate": 0.01, "train_images": 3})
        / "manifest.json"
    )
    assert len(subset.split("train")) == 3 and len(subset.split("val")) == 6
    markdown = (out / "sweep.md").read_text(encoding="utf-8")
    assert markdown.count("\n| ") == 5  # header + 4 runs

    # Started again: nothing is retrained, the same table comes back.
    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done before, kept") == 4
    assert json.loads((out / "sweep.json").read_text(encoding="utf-8"))["runs"] == runs


def test_subset_is_seeded_and_keeps_other_splits(tmp_path: Path) -> None:
    manifest_path, _, _ = write_tiny_dataset(tmp_path)
    manifest = Manifest.load(manifest_path)
    first = subset_manifest(manifest, 2, seed=1)
    assert [r.file for r in first.split("train")] == [
        r.file for r in subset_manifest(manifest, 2, seed=1).split("train")
    ]
    assert first.split("val") == manifest.split("val")
    assert subset_manifest(manifest, "all", seed=1) is manifest
    with pytest.raises(CaptionerError, match="train_images"):
        subset_manifest(manifest, 0, seed=1)


def test_bad_sweep_files(tmp_path: Path) -> None:
    spec_path = _write_spec(tmp_path, {"batch_size": [2]})
    data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    for change, message in (
        ({"grid": {"nope": [1]}}, "unknown setting 'nope'"),
        ({"grid": {"batch_size": 4}}, "non-empty list"),
        ({"grid": None}, "'grid' must map"),
        ({"extra": 1}, "unknown sweep keys: extra"),
    ):
        spec_path.write_text(yaml.safe_dump({**data, **change}), encoding="utf-8")
        with pytest.raises(CaptionerError, match=message):
            SweepSpec.from_yaml(spec_path)
    with pytest.raises(CaptionerError, match="not found"):
        SweepSpec.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_sweeps_parse(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parents[2])  # their paths are relative to the repository root
    spec = SweepSpec.from_yaml(path)
    assert len(spec.points()) >= 2
