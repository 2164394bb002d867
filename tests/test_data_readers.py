"""Annotation readers: every format, and defects skipped and counted instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.data.readers import read_annotations
from captioner.errors import DatasetError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_flickr_token_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "Flickr8k.token.txt",
        "a.jpg#0\tA dog runs .\na.jpg#1\tA dog is running\nb.jpg#0\tTwo cats\n\n"
        "garbage line without tab\nc.jpg#0\t   \n",
    )
    raw = read_annotations(path)
    assert raw.format == "flickr"
    assert raw.captions == {"a.jpg": ["A dog runs .", "A dog is running"], "b.jpg": ["Two cats"]}
    assert raw.splits == {}
    assert raw.problems["malformed_line"] == ["line 5 of Flickr8k.token.txt"]
    assert raw.problems["empty_caption"] == ["line 6 of Flickr8k.token.txt"]
    assert raw.problems["no_captions"] == ["c.jpg"]


def test_flickr_csv_variant_with_commas(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "captions.txt",
        "image,caption\n"
        'a.jpg,"A dog, brown and white, runs ."\n'
        "a.jpg,A dog runs, fast .\n"
        "b.jpg,Two cats\n",
    )
    raw = read_annotations(path)
    assert raw.format == "flickr-csv"
    assert raw.captions == {
        "a.jpg": ["A dog, brown and white, runs .", "A dog runs, fast ."],
        "b.jpg": ["Two cats"],
    }
    assert raw.problems == {}
    assert read_annotations(path, fmt="flickr").captions == raw.captions


def test_plain_csv_without_header(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "captions.txt",
        "0001.jpg, Một người đàn ông, đang đi xe đạp . \n"
        "0001.jpg,Hai người   \n"
        "no comma here\n"
        ", caption without file\n"
        "0002.jpg,  \n",
    )
    raw = read_annotations(path)
    assert raw.format == "csv"
    assert raw.captions == {"0001.jpg": ["Một người đàn ông, đang đi xe đạp .", "Hai người"]}
    assert raw.problems["malformed_line"] == ["line 3 of captions.txt", "line 4 of captions.txt"]
    assert raw.problems["empty_caption"] == ["line 5 of captions.txt"]
    assert raw.problems["no_captions"] == ["0002.jpg"]


def test_csv_header_detection(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "File , Text\nx/a.png, hello\n")
    raw = read_annotations(path)
    assert raw.format == "csv" and raw.captions == {"x/a.png": ["hello"]}


def test_duplicates_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "a.jpg, same\na.jpg, same \nb.jpg, same\n")
    raw = read_annotations(path)
    assert raw.captions == {"a.jpg": ["same"], "b.jpg": ["same"]}
    assert raw.problems == {"duplicate_caption": ["line 2 of c.csv"]}


def test_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("image,caption\na.jpg,hi\n".encode("utf-8-sig"))
    assert read_annotations(path).captions == {"a.jpg": ["hi"]}


def test_coco(tmp_path: Path) -> None:
    data = {
        "images": [
            {"id": 1, "file_name": "1.jpg"},
            {"id": 2, "file_name": "2.jpg"},
            {"id": 3, "file_name": "3.jpg"},
        ],
        "annotations": [
            {"image_id": 2, "caption": "second image"},
            {"image_id": 1, "caption": "first image"},
            {"image_id": 1, "caption": "  "},
            {"image_id": 9, "caption": "orphan"},
            {"caption": "no image id"},
        ],
    }
    raw = read_annotations(_write(tmp_path / "captions.json", json.dumps(data)))
    assert raw.format == "coco"
    assert list(raw.captions) == ["1.jpg", "2.jpg"]  # order of the images list
    assert raw.captions["1.jpg"] == ["first image"]
    assert raw.problems["no_captions"] == ["3.jpg"]
    assert raw.problems["empty_caption"] == ["annotations[2] of captions.json"]
    assert raw.problems["unknown_image"] == ["annotations[3] of captions.json: image_id 9"]
    assert raw.problems["malformed_entry"] == ["annotations[4] of captions.json"]


def _karpathy() -> dict:
    def image(name: str, split: str, *raws: str, filepath: str | None = None) -> dict:
        entry = {
            "filename": name,
            "split": split,
            "sentences": [{"raw": r, "tokens": r.split()} for r in raws],
        }
        if filepath:
            entry["filepath"] = filepath
        return entry

    images = [
        image("a.jpg", "train", "A dog ."),
        image("b.jpg", "restval", "A cat ."),
        image("c.jpg", "val", "A bird ."),
        image("d.jpg", "test", "A fish .", filepath="val2014"),
        image("e.jpg", "train"),
    ]
    images[2]["sentences"].append({"tokens": ["from", "tokens"]})
    return {"images": images, "dataset": "coco"}


def test_karpathy_with_restval(tmp_path: Path) -> None:
    path = _write(tmp_path / "dataset_coco.json", json.dumps(_karpathy()))
    raw = read_annotations(path)
    assert raw.format == "karpathy"
    assert raw.splits == {
        "a.jpg": "train",
        "b.jpg": "train",
        "c.jpg": "val",
        "val2014/d.jpg": "test",
    }
    assert raw.captions["c.jpg"] == ["A bird .", "from tokens"]
    assert raw.problems == {"no_captions": ["e.jpg"]}
    kept = read_annotations(path, restval_to_train=False)
    assert kept.splits["b.jpg"] == "restval"


def test_jsonl_with_list_captions(tmp_path: Path) -> None:
    lines = [
        json.dumps({"image": "a.png", "caption": ["one", "two", ""], "split": "val"}),
        json.dumps({"file_name": "b.png", "caption": "three"}),
        "{not json",
        json.dumps({"image": "c.png"}),
        json.dumps(["a list"]),
        json.dumps({"file": "d.png", "caption": "đạp xe", "split": "test"}),
    ]
    raw = read_annotations(_write(tmp_path / "c.jsonl", "\n".join(lines) + "\n"))
    assert raw.format == "jsonl"
    assert raw.captions == {"a.png": ["one", "two"], "b.png": ["three"], "d.png": ["đạp xe"]}
    assert raw.splits == {"a.png": "val", "d.png": "test"}
    assert raw.problems["empty_caption"] == ["line 1 of c.jsonl"]
    assert len(raw.problems["malformed_line"]) == 3
    assert raw.problems["malformed_line"][0].startswith("line 3 of c.jsonl")


def test_non_utf8_reports_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"a.jpg, fine\nb.jpg, caf\xe9\n")
    with pytest.raises(DatasetError, match=r"byte offset 22 \(line 2\)") as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", '{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match="invalid JSON at line 2, column 12"):
        read_annotations(path)


@pytest.mark.parametrize(
    ("name", "text", "fmt", "message"),
    [
        ("c.json", '{"images": []}', "auto", "neither COCO nor Karpathy"),
        ("c.json", "[1, 2]", "coco", "not a COCO captions file"),
        ("c.xml", "<x/>", "auto", "supported formats: coco, karpathy"),
        ("c.txt", "a, b", "yaml", "unknown format 'yaml'"),
    ],
)
def test_unusable_files(tmp_path: Path, name: str, text: str, fmt: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_annotations(_write(tmp_path / name, text), fmt=fmt)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        read_annotations(tmp_path / "absent.txt")


def test_unsafe_file_names_are_refused(tmp_path: Path) -> None:
    raw = read_annotations(
        _write(tmp_path / "c.csv", "../x.jpg, up\n/etc/y.jpg, abs\nok.jpg, ok\n")
    )
    assert raw.captions == {"ok.jpg": ["ok"]}
    assert len(raw.problems["bad_file_name"]) == 2


def test_non_utf8_offset_counts_the_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg, \xff\n")
    with pytest.raises(DatasetError, match=r"byte 0xff at byte offset 10 \(line 1\)"):
        read_annotations(path)


def test_punctuation_only_caption_counts_as_empty(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "a.jpg, .\na.jpg, a dog\nb.jpg, ?!\n")
    raw = read_annotations(path)
    assert raw.captions == {"a.jpg": ["a dog"]}
    assert raw.problems["empty_caption"] == ["line 1 of c.csv", "line 3 of c.csv"]
    assert raw.problems["no_captions"] == ["b.jpg"]
