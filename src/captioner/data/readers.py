"""Readers for caption annotation files: COCO, Karpathy, Flickr, CSV and JSONL.

Every reader returns :class:`RawAnnotations`. A bad file (missing, not UTF-8, invalid JSON,
wrong overall shape) raises :class:`DatasetError`; a bad line or entry is skipped and listed
in ``problems`` under its reason, so one defect never stops a whole dataset.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from captioner.data.text import tokenize
from captioner.errors import DatasetError

FORMATS: tuple[str, ...] = ("coco", "karpathy", "flickr", "csv", "jsonl")
TEXT_SUFFIXES = {".txt", ".csv", ".token", ".tsv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_TOKEN_LINE = re.compile(r"^(\S+)#(\d+)(?:\s+(.*))?$")
_HEADER_FILE = {"image", "file", "filename", "file_name", "image_name", "image_id"}
_HEADER_CAPTION = {"caption", "text", "captions", "sentence"}
_FILE_KEYS = ("image", "file", "file_name", "filename")


@dataclass
class RawAnnotations:
    """Captions per image file (first-seen order), splits when given, problems by reason."""

    captions: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    format: str = ""

    def problem(self, reason: str, item: str) -> None:
        self.problems.setdefault(reason, []).append(item)

    def add(self, file: Any, caption: Any, where: str, keep_duplicate: bool = False) -> None:
        """Add one caption, recording bad names, empty captions and exact duplicates.

        ``keep_duplicate`` keeps a caption identical to an earlier one of the same image: in
        benchmark files (COCO, Karpathy) each is a separate annotator's reference, and the
        metrics the papers report count them all.
        """
        name = clean_file_name(file)
        if name is None:
            self.problem("bad_file_name", f"{where}: {file!r}")
            return
        if not isinstance(caption, str):
            self.problem("malformed_entry", f"{where}: caption is not a string")
            return
        captions = self.captions.setdefault(name, [])
        text = caption.strip()
        if not tokenize(text):  # empty, or punctuation only (e.g. ".")
            self.problem("empty_caption", where)
            return
        if text in captions and not keep_duplicate:
            self.problem("duplicate_caption", where)
            return
        captions.append(text)

    def set_split(self, file: Any, split: Any, where: str) -> None:
        name = clean_file_name(file)
        if name is None or split is None:
            return
        if not isinstance(split, str) or not split.strip():
            self.problem("malformed_entry", f"{where}: split is not a non-empty string")
            return
        old = self.splits.setdefault(name, split.strip())
        if old != split.strip():
            self.problem("conflicting_split", f"{where}: {name} is in {old!r} and {split!r}")

    def finish(self) -> RawAnnotations:
        """Drop images left without a valid caption, listing them under ``no_captions``."""
        for name in [n for n, captions in self.captions.items() if not captions]:
            del self.captions[name]
            self.splits.pop(name, None)
            self.problem("no_captions", name)
        return self


def clean_file_name(file: Any) -> str | None:
    """A relative POSIX path, or None for a name that is empty, absolute or leaves the root."""
    if not isinstance(file, str) or not file.strip():
        return None
    path = PurePosixPath(file.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", str(path)):
        return None
    return path.as_posix()


def read_text_file(path: Path) -> str:
    """The file as text (UTF-8, BOM allowed), or a DatasetError saying where it is not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot be read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:offset].count(b"\n") + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DatasetError(
            path,
            f"not valid UTF-8 text{hint}: byte 0x{data[offset]:02x} at byte offset "
            f"{offset} (line {line}); re-save the file as UTF-8",
        ) from None


def parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def load_json_file(path: Path) -> Any:
    return parse_json(read_text_file(path), path)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _images_list(data: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(path, f"not a {what} file: expected an object with an 'images' list")
    return data["images"]


def read_coco(path: Path, data: Any = None) -> RawAnnotations:
    """COCO captions: ``images`` (id, file_name) and ``annotations`` (image_id, caption)."""
    data = load_json_file(path) if data is None else data
    images = _images_list(data, path, "COCO captions")
    if not isinstance(data.get("annotations"), list):
        raise DatasetError(path, "not a COCO captions file: expected an 'annotations' list")
    raw, files = RawAnnotations(format="coco"), {}
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image:
            raw.problem("malformed_entry", f"images[{i}] of {path.name}")
        elif clean_file_name(image.get("file_name")) is None:
            raw.problem("bad_file_name", f"images[{i}] of {path.name}: {image.get('file_name')!r}")
        elif str(image["id"]) in files:  # the first entry wins; captions follow the id
            raw.problem(
                "duplicate_id",
                f"images[{i}] of {path.name}: id {image['id']!r} is already "
                f"{files[str(image['id'])]!r}",
            )
        else:
            files[str(image["id"])] = clean_file_name(image["file_name"])
    per_file: dict[str, list[tuple[Any, str]]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] of {path.name}"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raw.problem("malformed_entry", where)
        elif str(ann["image_id"]) not in files:
            raw.problem("unknown_image", f"{where}: image_id {ann['image_id']!r}")
        else:
            per_file.setdefault(files[str(ann["image_id"])], []).append((ann["caption"], where))
    for file in dict.fromkeys(files.values()):
        raw.captions.setdefault(file, [])
        for caption, where in per_file.get(file, []):
            raw.add(file, caption, where, keep_duplicate=True)
    return raw.finish()


def read_karpathy(path: Path, restval_to_train: bool = True, data: Any = None) -> RawAnnotations:
    """Karpathy split json: images with filename, optional filepath, split and sentences."""
    data = load_json_file(path) if data is None else data
    raw = RawAnnotations(format="karpathy")
    for i, image in enumerate(_images_list(data, path, "Karpathy split")):
        where = f"images[{i}] of {path.name}"
        if not isinstance(image, dict) or not isinstance(image.get("sentences", []), list):
            raw.problem("malformed_entry", where)
            continue
        name = image.get("filename")
        if isinstance(image.get("filepath"), str) and isinstance(name, str) and image["filepath"]:
            name = f"{image['filepath']}/{name}"
        file = clean_file_name(name)
        if file is None:
            raw.problem("bad_file_name", f"{where}: {name!r}")
            continue
        raw.captions.setdefault(file, [])
        for j, sentence in enumerate(image.get("sentences", [])):
            raw.add(
                file,
                _sentence_text(sentence),
                f"images[{i}].sentences[{j}] of {path.name}",
                keep_duplicate=True,
            )
        split = image.get("split")
        raw.set_split(file, "train" if split == "restval" and restval_to_train else split, where)
    return raw.finish()


def _sentence_text(sentence: Any) -> Any:
    if not isinstance(sentence, dict):
        return None
    if isinstance(sentence.get("raw"), str) and sentence["raw"].strip():
        return sentence["raw"]
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens)
    return sentence.get("raw")


def _split_pair(line: str) -> tuple[str, str] | None:
    """(file, caption) of ``file, caption``: first comma, or CSV quoting when used."""
    head, sep, tail = line.partition(",")
    if not sep:
        return None
    if head.lstrip().startswith('"') or tail.lstrip().startswith('"'):
        row = next(csv.reader([line], skipinitialspace=True))
        if len(row) == 2:
            return row[0].strip(), row[1].strip()
        if head.lstrip().startswith('"'):
            return None
    return head.strip(), tail.strip()


def _is_header(pair: tuple[str, str] | None) -> bool:
    return pair is not None and (
        pair[0].lower() in _HEADER_FILE and pair[1].lower() in _HEADER_CAPTION
    )


def read_csv(path: Path, text: str | None = None) -> RawAnnotations:
    """``image, caption`` lines, optional header; the caption may contain commas."""
    text = read_text_file(path) if text is None else text
    raw = RawAnnotations(format="csv")
    for index, (number, line) in enumerate(_lines(text)):
        pair = _split_pair(line)
        if index == 0 and _is_header(pair):
            flickr = pair is not None and (pair[0].lower(), pair[1].lower()) == ("image", "caption")
            raw.format = "flickr-csv" if flickr else "csv"
            continue
        where = f"line {number} of {path.name}"
        if pair is None or not pair[0]:
            raw.problem("malformed_line", where)
        else:
            raw.add(pair[0], pair[1], where)
    return raw.finish()


def read_flickr(path: Path, text: str | None = None) -> RawAnnotations:
    """Flickr8k/30k token file (``name.jpg#0<TAB>caption``) or the CSV variant with header."""
    text = read_text_file(path) if text is None else text
    first = next(_lines(text), (0, ""))[1]
    if not _TOKEN_LINE.match(first.strip()):
        raw = read_csv(path, text)
        raw.format = "flickr-csv"
        return raw
    raw = RawAnnotations(format="flickr")
    for number, line in _lines(text):
        match = _TOKEN_LINE.match(line.strip())
        where = f"line {number} of {path.name}"
        if match is None:
            raw.problem("malformed_line", where)
        else:
            raw.add(match[1], match[3] or "", where)
    return raw.finish()


def read_jsonl(path: Path, text: str | None = None) -> RawAnnotations:
    """One object per line: ``image`` (or file/file_name), ``caption`` (str or list), split."""
    text = read_text_file(path) if text is None else text
    raw = RawAnnotations(format="jsonl")
    for number, line in _lines(text):
        where = f"line {number} of {path.name}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raw.problem("malformed_line", f"{where} (invalid JSON at column {exc.colno})")
            continue
        fields = _record_fields(record)
        if fields is None:
            raw.problem("malformed_line", f"{where} (needs 'image' and 'caption')")
            continue
        file, captions = fields
        name = clean_file_name(file)
        if name is not None:
            raw.captions.setdefault(name, [])  # seen, even if no caption turns out valid
        for caption in captions if isinstance(captions, list) else [captions]:
            raw.add(file, caption, where)
        raw.set_split(file, record.get("split"), where)
    return raw.finish()


def _record_fields(record: Any) -> tuple[Any, Any] | None:
    """(file, caption or captions) of a JSONL record, or None when either is absent."""
    if not isinstance(record, dict):
        return None
    file = next((record[k] for k in _FILE_KEYS if k in record), None)
    captions = record.get("caption", record.get("captions"))
    return None if file is None or captions is None else (file, captions)


def detect_format(path: Path, text: str) -> tuple[str, Any]:
    """(format, parsed JSON or None) of an annotation file from its suffix and content."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = parse_json(text, path)
        if isinstance(data, dict) and "annotations" in data:
            return "coco", data
        images = data.get("images") if isinstance(data, dict) else None
        if isinstance(images, list) and any(
            isinstance(i, dict) and "sentences" in i for i in images
        ):
            return "karpathy", data
        raise DatasetError(path, f"JSON file is neither COCO nor Karpathy; {_supported()}")
    if suffix in JSONL_SUFFIXES:
        return "jsonl", None
    if suffix in TEXT_SUFFIXES:
        first = next(_lines(text), (0, ""))[1]
        if _TOKEN_LINE.match(first.strip()):
            return "flickr", None
        return "csv", None
    raise DatasetError(path, f"cannot tell the annotation format from {suffix!r}; {_supported()}")


def _supported() -> str:
    return (
        f"supported formats: {', '.join(FORMATS)} (.json = coco/karpathy, .jsonl = jsonl, "
        ".txt/.csv/.token = flickr/csv)"
    )


def read_annotations(
    path: Path, fmt: str = "auto", restval_to_train: bool = True
) -> RawAnnotations:
    """Read ``path`` as ``fmt`` (or detect it); see the module docstring for the formats."""
    path = Path(path)
    fmt = "flickr" if fmt == "flickr-csv" else fmt
    if fmt != "auto" and fmt not in FORMATS:
        raise DatasetError(path, f"unknown format {fmt!r}; {_supported()}")
    text = read_text_file(path)
    data: Any = None
    if fmt == "auto":
        fmt, data = detect_format(path, text)
    elif fmt in ("coco", "karpathy"):
        data = parse_json(text, path)
    readers: dict[str, Callable[[], RawAnnotations]] = {
        "coco": lambda: read_coco(path, data),
        "karpathy": lambda: read_karpathy(path, restval_to_train, data),
        "flickr": lambda: read_flickr(path, text),
        "csv": lambda: read_csv(path, text),
        "jsonl": lambda: read_jsonl(path, text),
    }
    return readers[fmt]()
