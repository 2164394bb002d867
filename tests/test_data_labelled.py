"""Labelled image collections: class folders, LABEL=DIR, CSV/JSONL, groups, splits."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from doctype_tiny import photo, text_page

from captioner.data.labelled import LabelledSet, assign_splits, read_sources
from captioner.errors import DatasetError


def _folders(root: Path) -> Path:
    seeds = itertools.count(100)
    for kind, make, groups in (
        ("Photo", photo, {"pacs": 6, "coco": 2}),
        ("Text", text_page, {"sroie": 5, "lept": 3, "tess": 2}),
        ("Sketch", text_page, {"only": 4}),
    ):
        (root / kind).mkdir(parents=True)
        for group, count in groups.items():
            for i in range(count):
                seed = next(seeds)  # one seed per picture: no two alike, the same every run
                make(seed).save(root / kind / f"{group}-{i:04d}.jpg")
    (root / "Text" / "notes.txt").write_text("not an image")
    return root


def test_class_folders_give_classes_and_groups_from_file_names(tmp_path: Path) -> None:
    data = read_sources([str(_folders(tmp_path / "kinds"))])
    assert data.classes == ["Photo", "Sketch", "Text"]
    assert len(data.images) == 8 + 10 + 4
    groups = {(item.label, item.group) for item in data.images}
    assert ("Photo", "pacs") in groups and ("Text", "lept") in groups
    assert not any(item.path.endswith(".txt") for item in data.images)


def test_label_equals_dir_adds_a_folder_and_duplicates_are_skipped(tmp_path: Path) -> None:
    root = _folders(tmp_path / "kinds")
    extra = tmp_path / "captions" / "images"
    extra.mkdir(parents=True)
    for i in range(3):
        photo(900 + i).save(extra / f"{i}.jpg")
    # the same bytes under a second name, in another source
    (extra / "copy.jpg").write_bytes((root / "Photo" / "pacs-0000.jpg").read_bytes())
    data = read_sources([str(root), f"Photo={extra}"])
    added = [item for item in data.images if item.path.startswith(extra.resolve().as_posix())]
    assert len(added) == 3 and {item.label for item in added} == {"Photo"}
    assert {item.group for item in added} == {extra.as_posix()}  # no prefix: the folder
    assert len(data.skipped["duplicate_content"]) == 1
    assert "copy.jpg" in data.skipped["duplicate_content"][0]


def test_csv_and_jsonl_with_groups_missing_files_and_bad_lines(tmp_path: Path) -> None:
    for i in range(4):
        photo(i).save(tmp_path / f"p{i}.jpg")
        text_page(i).save(tmp_path / f"t{i}.jpg")
    rows = ["image,label,group"] + [f"p{i}.jpg,Photo,cam{i % 2}" for i in range(4)]
    rows += [f"t{i}.jpg,Text" for i in range(4)] + ["gone.jpg,Text", "only-one-cell"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = read_sources([str(tmp_path / "labels.csv")])
    assert data.classes == ["Photo", "Text"]
    assert {i.group for i in data.images if i.label == "Photo"} == {"cam0", "cam1"}
    assert data.skipped["missing_file"] == [str(tmp_path / "gone.jpg")]
    assert "labels.csv:11" in data.skipped["malformed_line"][0]

    lines = [json.dumps({"image": f"p{i}.jpg", "label": "Photo"}) for i in range(4)]
    lines += [json.dumps({"image": f"t{i}.jpg", "label": "Text", "group": "g"}) for i in range(4)]
    lines += ["{not json", "[1, 2]"]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    data = read_sources([str(tmp_path / "labels.jsonl")])
    assert len(data.images) == 8 and len(data.skipped["malformed_line"]) == 2


def test_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_sources([str(tmp_path / "absent")])
    (tmp_path / "flat").mkdir()
    photo(0).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(DatasetError, match="no class folders"):
        read_sources([str(tmp_path / "flat")])
    with pytest.raises(DatasetError, match="at least two classes"):
        read_sources([f"Photo={tmp_path / 'flat'}"])


def test_group_split_holds_out_whole_sources_and_never_an_image_twice(tmp_path: Path) -> None:
    data = read_sources([str(_folders(tmp_path / "kinds"))])
    assign_splits(data, by="group", val_fraction=0.2, test_fraction=0.3, seed=1)
    by_unit: dict[tuple[str, str], set[str]] = {}
    for item in data.images:
        by_unit.setdefault((item.label, item.group), set()).add(item.split)
    # a (class, source) unit is wholly test or wholly out of test, except the one-source class
    for (label, _), splits in by_unit.items():
        if label != "Sketch":
            assert splits == {"test"} or "test" not in splits
    assert data.split_info["random_within_group"] == ["Sketch"]
    for label in ("Photo", "Text"):
        assert data.split_info["held_out_groups"]["test"][label]  # something held out
        assert any(i.split == "train" for i in data.images if i.label == label)
    assert {i.split for i in data.images} == {"train", "val", "test"}
    assert len({i.path for i in data.images}) == len(data.images)
    # seeded: the same split again
    again = assign_splits(
        read_sources([str(tmp_path / "kinds")]), val_fraction=0.2, test_fraction=0.3, seed=1
    )
    assert [i.split for i in again.images] == [i.split for i in data.images]


def test_random_split_is_stratified_and_saved(tmp_path: Path) -> None:
    data = read_sources([str(_folders(tmp_path / "kinds"))])
    assign_splits(data, by="random", val_fraction=0.25, test_fraction=0.25, seed=0)
    counts = data.counts()
    assert counts["val"] == {"Photo": 2, "Sketch": 1, "Text": 2}
    assert counts["test"] == {"Photo": 2, "Sketch": 1, "Text": 2}
    data.save(tmp_path / "data.json")
    loaded = LabelledSet.load(tmp_path / "data.json")
    assert [(i.path, i.split) for i in loaded.images] == [(i.path, i.split) for i in data.images]
    with pytest.raises(DatasetError, match="fractions"):
        assign_splits(data, val_fraction=1.5)
