"""The prepared dataset: image files with their split and captions, saved as one JSON file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captioner.data.readers import clean_file_name, load_json_file
from captioner.errors import DatasetError
from captioner.fileio import atomic_write_json

FORMAT = "captioner-manifest"
VERSION = 1
SPLIT_ORDER = ("train", "val", "test", "restval")


@dataclass
class ImageRecord:
    """One image: ``file`` is a POSIX path relative to the manifest's image root."""

    file: str
    split: str
    captions: list[str]


@dataclass
class Manifest:
    """Images (in annotation order) with splits, where they came from and what was skipped."""

    image_root: Path
    images: list[ImageRecord]
    source: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def split(self, name: str) -> list[ImageRecord]:
        return [record for record in self.images if record.split == name]

    def path_of(self, record: ImageRecord) -> Path:
        return self.image_root / record.file

    def split_names(self) -> list[str]:
        """Splits present: train, val, test, restval first, then others alphabetically."""
        names = {record.split for record in self.images}
        known = [name for name in SPLIT_ORDER if name in names]
        return known + sorted(names - set(SPLIT_ORDER))

    def summary(self) -> dict[str, Any]:
        """Image and caption counts, in total and per split, and skipped counts per reason."""
        splits = {
            name: {
                "images": len(records := self.split(name)),
                "captions": sum(len(r.captions) for r in records),
            }
            for name in self.split_names()
        }
        return {
            "images": len(self.images),
            "captions": sum(len(r.captions) for r in self.images),
            "splits": splits,
            "skipped": {reason: len(items) for reason, items in self.skipped.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "image_root": str(Path(self.image_root).resolve()),
            "source": self.source,
            "images": [asdict(record) for record in self.images],
            "skipped": self.skipped,
        }

    def save(self, path: str | Path) -> None:
        """Write JSON (UTF-8, readable non-ASCII) atomically; the image root is absolute."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and validate a manifest; a relative image root is taken from its folder."""
        path = Path(path)
        data = load_json_file(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DatasetError(path, "not a captioner manifest (run `captioner prepare` first)")
        if data.get("version") != VERSION:
            raise DatasetError(path, f"unsupported manifest version {data.get('version')!r}")
        root = data.get("image_root")
        if not isinstance(root, str) or not root:
            raise DatasetError(path, "'image_root' must be a non-empty string")
        source, skipped = data.get("source", {}), data.get("skipped", {})
        if not isinstance(source, dict):
            raise DatasetError(path, "'source' must be an object")
        if not isinstance(skipped, dict) or not all(
            isinstance(v, list) and all(isinstance(i, str) for i in v) for v in skipped.values()
        ):
            raise DatasetError(path, "'skipped' must map reasons to lists of strings")
        image_root = Path(root) if Path(root).is_absolute() else path.parent.resolve() / root
        return cls(image_root, _records(data.get("images"), path), source, skipped)


def _records(items: Any, path: Path) -> list[ImageRecord]:
    """Validated image records; a DatasetError names the first bad entry."""
    if not isinstance(items, list):
        raise DatasetError(path, "'images' must be a list")
    records, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatasetError(path, f"images[{i}] must be an object")
        file, split, captions = item.get("file"), item.get("split"), item.get("captions")
        if clean_file_name(file) != file:
            raise DatasetError(path, f"images[{i}].file must be a relative POSIX path: {file!r}")
        if not isinstance(split, str) or not split:
            raise DatasetError(path, f"images[{i}].split must be a non-empty string")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DatasetError(path, f"images[{i}].captions must be a list of strings")
        if file in seen:
            raise DatasetError(path, f"images[{i}]: {file!r} is listed twice")
        seen.add(file)
        records.append(ImageRecord(file, split, list(captions)))
    return records
