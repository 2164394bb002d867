"""prepare_dataset: missing / uncaptioned images reported, splits by image, manifest files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.data.manifest import ImageRecord, Manifest
from captioner.data.prepare import format_summary, prepare_dataset, seeded_split
from captioner.errors import CaptionerError, DatasetError


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i * 7 % 256, 0, 0)).save(folder / name)
    return folder


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{f}, {c}\n" for f, c in rows), encoding="utf-8")
    return path


NAMES = [f"{i:03d}.png" for i in range(20)]


def test_missing_and_uncaptioned_images_are_skipped(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", ["a.png", "b.png", "sub/c.png", "lonely.png", "d.png"])
    ann = _csv(
        tmp_path / "captions.txt",
        [
            ("a.png", "one"),
            ("gone.png", "two"),
            ("b.png", "three"),
            ("sub/c.png", "four"),
            ("d.png", " "),
            ("a.png", "five"),
        ],
    )
    manifest = prepare_dataset(ann, images)
    assert [r.file for r in manifest.images] == ["a.png", "b.png", "sub/c.png"]
    assert manifest.images[0].captions == ["one", "five"]
    assert manifest.skipped["missing_image"] == ["gone.png"]
    assert sorted(manifest.skipped["no_captions"]) == ["d.png", "lonely.png"]
    assert manifest.skipped["empty_caption"] == ["line 5 of captions.txt"]
    assert manifest.source["format"] == "csv"
    assert manifest.source["annotations"] == str(ann.resolve())
    assert manifest.source["seed"] == 0
    text = format_summary(manifest)
    assert "3 images, 4 captions" in text and "missing_image: 1 (gone.png)" in text


def test_seeded_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", NAMES)
    ann = _csv(tmp_path / "c.txt", [(n, f"caption {n}") for n in NAMES])
    first = prepare_dataset(ann, images, seed=3)
    again = prepare_dataset(ann, images, seed=3)
    other = prepare_dataset(ann, images, seed=4)
    assert [(r.file, r.split) for r in first.images] == [(r.file, r.split) for r in again.images]
    assert [r.split for r in first.images] != [r.split for r in other.images]
    groups = {s: {r.file for r in first.split(s)} for s in first.split_names()}
    assert first.split_names() == ["train", "val", "test"]
    assert [len(groups[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert set().union(*groups.values()) == set(NAMES)
    assert sum(len(g) for g in groups.values()) == len(NAMES)


def test_seeded_split_small_sets() -> None:
    three = seeded_split(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(three.values()) == ["test", "train", "val"]
    assert seeded_split(["a", "b"], 0.1, 0.1, seed=0) == {"a": "train", "b": "train"}
    assert set(seeded_split(["a", "b", "c"], 0.0, 0.0, seed=0).values()) == {"train"}


def test_karpathy_splits_are_respected(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png"])
    data = {
        "images": [
            {"filename": "a.png", "split": "test", "sentences": [{"raw": "x"}]},
            {"filename": "b.png", "split": "restval", "sentences": [{"raw": "y"}]},
            {"filename": "c.png", "split": "val", "sentences": [{"raw": "z"}]},
            {"filename": "absent.png", "split": "train", "sentences": [{"raw": "w"}]},
        ],
        "dataset": "test",
    }
    ann = tmp_path / "dataset.json"
    ann.write_text(json.dumps(data), encoding="utf-8")
    manifest = prepare_dataset(ann, images)
    assert {r.file: r.split for r in manifest.images} == {
        "a.png": "test",
        "b.png": "train",
        "c.png": "val",
    }
    assert manifest.skipped["missing_image"] == ["absent.png"]
    assert manifest.skipped["no_captions"] == ["d.png"]
    kept = prepare_dataset(ann, images, restval_to_train=False)
    assert kept.split_names() == ["val", "test", "restval"]


def test_jsonl_without_split_defaults_to_train(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", ["a.png", "b.png"])
    ann = tmp_path / "c.jsonl"
    ann.write_text(
        '{"image": "a.png", "caption": "x", "split": "val"}\n{"image": "b.png", "caption": "y"}\n',
        encoding="utf-8",
    )
    manifest = prepare_dataset(ann, images)
    assert {r.file: r.split for r in manifest.images} == {"a.png": "val", "b.png": "train"}


def test_max_images_keeps_first_usable(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", NAMES)
    rows = [("missing.png", "m")] + [(n, f"c {n}") for n in reversed(NAMES)]
    manifest = prepare_dataset(_csv(tmp_path / "c.txt", rows), images, max_images=5)
    assert [r.file for r in manifest.images] == list(reversed(NAMES))[:5]
    assert manifest.source["max_images"] == 5


def test_manifest_save_load_round_trip(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", NAMES[:6])
    ann = _csv(tmp_path / "c.txt", [(n, "Một người đi xe đạp") for n in NAMES[:6]])
    manifest = prepare_dataset(ann, images)
    path = tmp_path / "out" / "manifest.json"
    manifest.save(path)
    assert "người" in path.read_text(encoding="utf-8")
    loaded = Manifest.load(path)
    assert loaded == manifest
    assert loaded.path_of(loaded.images[0]).is_file()
    assert loaded.summary() == manifest.summary()
    assert not list(path.parent.glob("*.tmp"))


def test_manifest_relative_image_root(tmp_path: Path) -> None:
    manifest = Manifest(Path("x"), [ImageRecord("a.png", "train", ["c"])], {}, {})
    data = manifest.to_dict() | {"image_root": "img"}
    (tmp_path / "m.json").write_text(json.dumps(data), encoding="utf-8")
    assert Manifest.load(tmp_path / "m.json").image_root == tmp_path.resolve() / "img"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a captioner manifest"),
        ({"version": 7}, "unsupported manifest version"),
        ({"images": [{"file": "/abs.png", "split": "train", "captions": []}]}, "relative"),
        ({"images": [{"file": "a.png", "split": "train", "captions": "x"}]}, "captions"),
        ({"images": [{"file": "a.png", "split": "t", "captions": []}] * 2}, "listed twice"),
        ({"skipped": {"x": [1]}}, "skipped"),
    ],
)
def test_manifest_load_rejects_bad_files(tmp_path: Path, change: dict, message: str) -> None:
    data = Manifest(tmp_path, [], {}, {}).to_dict() | change
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        Manifest.load(path)


def test_manifest_load_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(DatasetError, match="invalid JSON"):
        Manifest.load(path)


def test_nothing_usable_is_a_clear_error(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", ["1.png"])
    ann = tmp_path / "t.token"
    ann.write_text("1.tif#0\ta field\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="'1.tif' is missing but '1.png' exists"):
        prepare_dataset(ann, images)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image folder not found"):
        prepare_dataset(tmp_path / "c.txt", tmp_path / "nowhere")
    with pytest.raises(CaptionerError, match="leave some images"):
        prepare_dataset(tmp_path / "c.txt", tmp_path, val_fraction=0.5, test_fraction=0.5)
