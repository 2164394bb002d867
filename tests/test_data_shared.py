"""prepare_dataset on the real datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.manifest import Manifest
from captioner.data.prepare import prepare_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


def _counts(manifest: Manifest) -> dict[str, int]:
    return {name: len(manifest.split(name)) for name in manifest.split_names()}


def test_ucm_karpathy_json(data: Path) -> None:
    folder = data / "ucm-captions"
    manifest = prepare_dataset(folder / "dataset_ucm.json", folder / "images")
    assert manifest.source["format"] == "karpathy"
    assert _counts(manifest) == {"train": 1680, "val": 210, "test": 210}
    assert "missing_image" not in manifest.skipped
    assert "no_captions" not in manifest.skipped
    # the formulaic UCM captions repeat within an image; every annotator's reference is kept
    assert manifest.summary()["captions"] == 10_500
    assert "duplicate_caption" not in manifest.skipped


def test_vietnamese_captions(data: Path, tmp_path: Path) -> None:
    folder = data / "vietnamese-captions"
    manifest = prepare_dataset(folder / "captions.txt", folder / "images", seed=0)
    assert manifest.source["format"] == "csv"
    assert len(manifest.skipped["missing_image"]) == 2
    # 3 images have no caption line; 2 more have only "." as caption
    assert len(manifest.skipped["no_captions"]) == 5
    assert len(manifest.skipped["empty_caption"]) == 2
    assert len(manifest.images) == 2932 - 5
    counts = _counts(manifest)
    assert counts == {"train": 2341, "val": 293, "test": 293}
    words = {w for r in manifest.images for c in r.captions for w in c.split()}
    assert "người" in words
    assert all(c == c.strip() for r in manifest.images for c in r.captions)
    path = tmp_path / "manifest.json"
    manifest.save(path)
    assert Manifest.load(path) == manifest


def test_flickr8k_mini_token_file(data: Path) -> None:
    folder = data / "flickr8k-mini"
    manifest = prepare_dataset(folder / "Flickr8k.token.txt", folder / "Images")
    assert manifest.source["format"] == "flickr"
    assert len(manifest.images) == 264
    assert len(manifest.skipped["missing_image"]) == 8092 - 264
    assert all(manifest.path_of(r).is_file() for r in manifest.images)


def test_flickr8k_mini_karpathy_json(data: Path) -> None:
    folder = data / "flickr8k-mini"
    manifest = prepare_dataset(folder / "dataset_flickr8k.json", folder / "Images")
    assert _counts(manifest) == {"train": 230, "val": 20, "test": 13}
    assert len(manifest.skipped["missing_image"]) == 8000 - 263
    assert manifest.skipped["no_captions"] == ["61209225_8512e1dad5.jpg"]
