"""Labelled image collections (the document-type classifier's data) and their splits.

Sources a user already has:

- a folder per class, ``ROOT/<Class>/*.jpg`` (torchvision ``ImageFolder`` / Keras
  ``image_dataset_from_directory``): class names are the folder names;
- ``LABEL=DIR``: every image under ``DIR`` (recursively) is ``LABEL`` (e.g. the photos of a
  caption dataset as more ``Photo``);
- a CSV (``image,label[,group]``, header optional) or JSONL (``{"image", "label", "group"}``)
  file; image paths are relative to the file's folder.

Each image has a *group*, its source: the CSV/JSONL ``group`` when given, else the file-name
prefix before the first ``-`` or ``_`` followed by a digit (``pacs-0001.jpg`` -> ``pacs``),
else the folder it was read from. A group split holds out whole (class, group) units, so that
the test split measures sources the model has not seen. Missing files, unreadable images (checked
later, at feature extraction) and duplicates (same content under two names) are reported and
skipped, never fatal.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captioner.data.readers import read_text_file
from captioner.errors import DatasetError
from captioner.fileio import atomic_write_json, read_json_document, sha256_file
from captioner.vision.images import IMAGE_SUFFIXES

FORMAT = "captioner-labelled-images"
VERSION = 1
SPLITS = ("train", "val", "test")
DEFAULT_GROUP_PATTERN = r"^([A-Za-z][A-Za-z0-9]*)[-_]\d"


@dataclass
class LabelledImage:
    path: str  # absolute POSIX path
    label: str
    group: str
    split: str = "train"


@dataclass
class LabelledSet:
    """Images with a class, a group (source) and a split; what was skipped, by reason."""

    images: list[LabelledImage]
    classes: list[str]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    split_info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[LabelledImage]:
        return [item for item in self.images if item.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        table: dict[str, dict[str, int]] = {}
        for item in self.images:
            row = table.setdefault(item.split, dict.fromkeys(self.classes, 0))
            row[item.label] += 1
        return table

    def groups_of(self, split: str) -> dict[str, list[str]]:
        """The groups of each class present in ``split``."""
        found: dict[str, set[str]] = defaultdict(set)
        for item in self.split(split):
            found[item.label].add(item.group)
        return {label: sorted(found[label]) for label in self.classes if label in found}

    def save(self, path: str | Path) -> None:
        atomic_write_json(
            path,
            {
                "format": FORMAT,
                "version": VERSION,
                "classes": self.classes,
                "split_info": self.split_info,
                "skipped": self.skipped,
                "images": [asdict(item) for item in self.images],
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> LabelledSet:
        path = Path(path)
        data = read_json_document(
            path, FORMAT, VERSION, "labelled image list", missing="labelled image list not found"
        )
        try:
            images = [LabelledImage(**item) for item in data["images"]]
            return cls(images, list(data["classes"]), data["skipped"], data["split_info"])
        except (KeyError, TypeError) as exc:
            raise DatasetError(path, f"malformed labelled image list ({exc})") from None


def read_sources(
    sources: Sequence[str],
    *,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
    max_per_group: int | None = None,
    seed: int = 0,
) -> LabelledSet:
    """Read every source (``ROOT``, ``LABEL=DIR``, ``file.csv``/``file.jsonl``) into one set.

    ``max_per_group`` keeps at most N images of each (class, group), a seeded sample (a caption
    dataset of 3,000 photos would otherwise swamp 200 sketches). Duplicates are found by content.
    """
    try:
        pattern = re.compile(group_pattern)
    except re.error as exc:
        raise DatasetError("--group-pattern", f"not a regular expression ({exc})") from None
    skipped: dict[str, list[str]] = defaultdict(list)
    entries: list[tuple[Path, str, str]] = []
    for source in sources:
        entries.extend(_read_source(source, pattern, skipped))
    if not entries:
        raise DatasetError(", ".join(sources) or "(none)", "no labelled images found")
    entries = _sample_groups(entries, max_per_group, seed)
    images: list[LabelledImage] = []
    seen_paths: set[Path] = set()
    seen_content: dict[str, Path] = {}
    for path, label, group in entries:
        resolved = path.resolve()
        if resolved in seen_paths:
            skipped["duplicate_entry"].append(str(path))
            continue
        seen_paths.add(resolved)
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            skipped["missing_file"].append(str(path))
            continue
        except OSError as exc:
            skipped["unreadable_file"].append(f"{path}: {exc.strerror or exc}")
            continue
        if digest in seen_content:
            skipped["duplicate_content"].append(f"{path} (same as {seen_content[digest]})")
            continue
        seen_content[digest] = path
        images.append(LabelledImage(resolved.as_posix(), label, group))
    classes = sorted({item.label for item in images})
    if len(classes) < 2:
        raise DatasetError(
            ", ".join(sources), f"needs at least two classes, found {classes or 'none'}"
        )
    return LabelledSet(images, classes, {k: v for k, v in skipped.items() if v})


def _read_source(
    source: str, pattern: re.Pattern[str], skipped: dict[str, list[str]]
) -> list[tuple[Path, str, str]]:
    label, sep, folder = source.partition("=")
    if sep and label and not Path(source).exists():
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise DatasetError(root, f"not a folder (from {source!r})")
        files = _image_files(root, recursive=True)
        if not files:
            raise DatasetError(root, "no image files in this folder")
        return [(f, label.strip(), _group(f, pattern, root.as_posix())) for f in files]
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_class_folders(path, pattern, skipped)
    if path.is_file():
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            return _read_table(path, _jsonl_rows(path, skipped), pattern, skipped)
        return _read_table(path, _csv_rows(path, skipped), pattern, skipped)
    raise DatasetError(path, "no such file or folder")


def _read_class_folders(
    root: Path, pattern: re.Pattern[str], skipped: dict[str, list[str]]
) -> list[tuple[Path, str, str]]:
    entries = []
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(root, "no class folders (expected ROOT/<Class>/*.jpg)")
    for folder in classes:
        files = _image_files(folder, recursive=True)
        if not files:
            skipped["empty_class_folder"].append(str(folder))
        entries.extend((f, folder.name, _group(f, pattern, folder.as_posix())) for f in files)
    return entries


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _group(path: Path, pattern: re.Pattern[str], fallback: str) -> str:
    match = pattern.search(path.name)
    if match:
        return match.group(1) if match.groups() else match.group(0)
    return fallback


def _csv_rows(path: Path, skipped: dict[str, list[str]]) -> Iterable[tuple[int, list[str]]]:
    text = read_text_file(path)
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and row[0].strip().lower() in {"image", "file", "filename", "path"}:
            continue
        yield number, [cell.strip() for cell in row]


def _jsonl_rows(path: Path, skipped: dict[str, list[str]]) -> Iterable[tuple[int, list[str]]]:
    text = read_text_file(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped["malformed_line"].append(f"{path}:{number}: {exc.msg}")
            continue
        if not isinstance(record, dict):
            skipped["malformed_line"].append(f"{path}:{number}: not a JSON object")
            continue
        cells = [record.get("image"), record.get("label"), record.get("group")]
        yield number, ["" if c is None else str(c) for c in cells]


def _read_table(
    path: Path,
    rows: Iterable[tuple[int, list[str]]],
    pattern: re.Pattern[str],
    skipped: dict[str, list[str]],
) -> list[tuple[Path, str, str]]:
    entries = []
    for number, cells in rows:
        if len(cells) < 2 or not cells[0] or not cells[1]:
            skipped["malformed_line"].append(f"{path}:{number}: expected image,label[,group]")
            continue
        image = (path.parent / cells[0]).expanduser()
        group = cells[2] if len(cells) > 2 and cells[2] else _group(image, pattern, path.as_posix())
        entries.append((image, cells[1], group))
    if not entries:
        raise DatasetError(path, "no image,label rows")
    return entries


def _sample_groups(
    entries: list[tuple[Path, str, str]], max_per_group: int | None, seed: int
) -> list[tuple[Path, str, str]]:
    if not max_per_group:
        return entries
    units: dict[tuple[str, str], list[tuple[Path, str, str]]] = defaultdict(list)
    for entry in entries:
        units[(entry[1], entry[2])].append(entry)
    keep: set[int] = set()
    for unit in units.values():
        rng = random.Random(f"{seed}:{unit[0][1]}:{unit[0][2]}")
        chosen = unit if len(unit) <= max_per_group else rng.sample(unit, max_per_group)
        keep.update(id(entry) for entry in chosen)
    return [entry for entry in entries if id(entry) in keep]


def assign_splits(
    data: LabelledSet,
    *,
    by: str = "group",
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> LabelledSet:
    """Give every image a split (in place; returns ``data``); no image is in two splits.

    ``by="group"``: the test split is made of unseen sources: per class, whole (class, group)
    units are held out, drawn in a seeded order, until the class's held-out share reaches
    ``test_fraction``; a unit larger than twice the target is passed over (holding out 94 % of
    a class teaches nothing), and a class with a single group (or whose groups are all too
    large) is split at random inside its groups, recorded in
    ``split_info["random_within_group"]``. Validation (early stopping, calibration) is then a
    seeded random ``val_fraction`` of the rest, per class. ``by="random"``: seeded random
    validation and test splits per class.
    """
    if by not in ("group", "random"):
        raise DatasetError("--split-by", f"must be 'group' or 'random', not {by!r}")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError("--val-fraction", "fractions must be in (0, 1) and sum to less than 1")
    rng = random.Random(seed)
    fallback: list[str] = []
    by_class: dict[str, list[LabelledImage]] = defaultdict(list)
    for item in data.images:
        item.split = "train"
        by_class[item.label].append(item)
    for label in data.classes:
        items = by_class[label]
        if by == "group" and test_fraction > 0:
            if not _split_by_group(items, [("test", test_fraction)], rng):
                fallback.append(label)
                _random_split(items, [("test", test_fraction)], rng)
            rest = [item for item in items if item.split == "train"]
            _random_split(rest, [("val", val_fraction / (1 - test_fraction))], rng)
        else:
            _random_split(items, [("val", val_fraction), ("test", test_fraction)], rng)
    data.split_info = {
        "by": by,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "random_within_group": fallback,
        "held_out_groups": {"test": data.groups_of("test")} if by == "group" else {},
    }
    return data


def _random_split(
    items: list[LabelledImage], wanted: list[tuple[str, float]], rng: random.Random
) -> None:
    order = items[:]
    rng.shuffle(order)
    start = 0
    for split, fraction in wanted:
        count = round(fraction * len(order))
        for item in order[start : start + count]:
            item.split = split
        start += count


def _split_by_group(
    items: list[LabelledImage], wanted: list[tuple[str, float]], rng: random.Random
) -> bool:
    """Hold out whole groups of one class; False when that cannot be done sensibly."""
    sizes = Counter(item.group for item in items)
    groups = sorted(sizes)
    rng.shuffle(groups)
    assignment: dict[str, str] = {}
    remaining = [g for g in groups]
    for split, fraction in wanted:
        if fraction <= 0:
            continue
        target = fraction * len(items)
        taken = 0
        for group in list(remaining):
            if taken >= target or len(remaining) <= 1:
                break
            if taken + sizes[group] > 2 * target:
                continue
            assignment[group] = split
            remaining.remove(group)
            taken += sizes[group]
        if taken == 0:
            return False
    for item in items:
        item.split = assignment.get(item.group, "train")
    return True


def _short(group: str) -> str:
    """A folder group shown by its last two path parts."""
    return "/".join(group.split("/")[-2:])


def describe(data: LabelledSet) -> str:
    """A short table: images per split and class, held-out groups, skipped counts."""
    lines = []
    counts = data.counts()
    width = max(len(c) for c in data.classes)
    lines.append(" " * (width + 2) + "".join(f"{s:>8}" for s in SPLITS if s in counts))
    for label in data.classes:
        cells = "".join(f"{counts[s][label]:>8}" for s in SPLITS if s in counts)
        lines.append(f"  {label:<{width}}{cells}")
    for split, groups in data.split_info.get("held_out_groups", {}).items():
        shown = "; ".join(f"{label}: {', '.join(map(_short, g))}" for label, g in groups.items())
        lines.append(f"  {split} sources (unseen in training): {shown}")
    fallback = data.split_info.get("random_within_group")
    if fallback:
        lines.append(f"  split at random (one source only): {', '.join(fallback)}")
    for reason, items in data.skipped.items():
        lines.append(f"  skipped {len(items)} ({reason.replace('_', ' ')}): {items[0]}")
    return "\n".join(lines)
