"""Turn an annotation file and an image folder into a :class:`Manifest` with splits."""

from __future__ import annotations

import math
import random
from pathlib import Path

from captioner.data.manifest import ImageRecord, Manifest
from captioner.data.readers import read_annotations
from captioner.errors import CaptionerError, DatasetError
from captioner.fileio import sha256_file
from captioner.vision.images import IMAGE_SUFFIXES

SUMMARY_EXAMPLES = 5


def prepare_dataset(
    annotations: Path,
    images: Path,
    fmt: str = "auto",
    max_images: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    restval_to_train: bool = True,
) -> Manifest:
    """Keep annotated images that exist under ``images``; split by the file or by seed."""
    _check_arguments(max_images, val_fraction, test_fraction)
    annotations, images = Path(annotations).resolve(), Path(images).resolve()
    if not images.is_dir():
        raise DatasetError(images, "image folder not found")
    raw = read_annotations(annotations, fmt, restval_to_train)
    skipped = {reason: list(items) for reason, items in raw.problems.items()}
    usable = [file for file in raw.captions if (images / file).is_file()]
    missing = [file for file in raw.captions if not (images / file).is_file()]
    if missing:
        skipped.setdefault("missing_image", []).extend(missing)
    unlisted = sorted(set(_image_files(images)) - set(raw.captions))
    if unlisted:
        no_captions = skipped.setdefault("no_captions", [])
        known = set(no_captions)
        no_captions.extend(f for f in unlisted if f not in known)
    if not usable:
        raise DatasetError(annotations, _nothing_usable(raw.captions, images))
    if max_images is not None:
        usable = usable[:max_images]
    split_from = "annotations" if raw.splits else "seeded"
    splits = (
        {file: raw.splits.get(file, "train") for file in usable}
        if raw.splits
        else seeded_split(usable, val_fraction, test_fraction, seed)
    )
    records = [ImageRecord(file, splits[file], list(raw.captions[file])) for file in usable]
    source = {
        "annotations": str(annotations),
        "annotations_sha256": sha256_file(annotations),
        "format": raw.format,
        "images": str(images),
        "split_from": split_from,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "max_images": max_images,
        "restval_to_train": restval_to_train,
    }
    return Manifest(images, records, source, skipped)


def _check_arguments(max_images: int | None, val_fraction: float, test_fraction: float) -> None:
    if max_images is not None and max_images < 1:
        raise CaptionerError(f"max_images must be at least 1, got {max_images}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CaptionerError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in "
            "[0, 1) and leave some images for training"
        )


def seeded_split(
    files: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each file to train/val/test: sorted, shuffled by ``seed``, cut by fractions."""
    order = sorted(files)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val, n_test = (_share(n, fraction) for fraction in (val_fraction, test_fraction))
    while n_val + n_test >= n and n_val + n_test > 0:  # always keep a training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return dict(zip(order, names, strict=True))


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), but at least 1 when the fraction is positive and n >= 3."""
    count = math.floor(n * fraction + 0.5)
    return max(count, 1) if fraction > 0 and n >= 3 else count


def _image_files(root: Path) -> list[str]:
    """Image files under ``root`` as POSIX paths relative to it (hidden files left out)."""
    return [
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    ]


def _nothing_usable(captions: dict[str, list[str]], images: Path) -> str:
    """Why no image could be used, with a hint when only the file extensions differ."""
    if not captions:
        return "no image with a valid caption was found in this file"
    examples = list(captions)[:3]
    problem = f"none of the {len(captions)} annotated images exist under {images} (e.g. {examples})"
    for file in examples:
        stem = Path(file).with_suffix("")
        others = [p.name for p in (images / stem).parent.glob(f"{stem.name}.*") if p.is_file()]
        if others:
            return (
                f"{problem}; {file!r} is missing but {others[0]!r} exists: the annotations "
                "may name another file extension than the images"
            )
    return problem


def format_summary(manifest: Manifest) -> str:
    """A short human report: counts per split, skipped counts with a few examples."""
    summary = manifest.summary()
    source = manifest.source
    how = (
        "splits from the annotations"
        if source.get("split_from") == "annotations"
        else f"seeded split, seed {source.get('seed')}"
    )
    lines = [
        f"{summary['images']} images, {summary['captions']} captions from "
        f"{Path(str(source.get('annotations', '?'))).name} ({source.get('format', '?')}, {how})"
    ]
    for name, counts in summary["splits"].items():
        lines.append(f"  {name}: {counts['images']} images, {counts['captions']} captions")
    if manifest.skipped:
        lines.append("skipped:")
    for reason, items in manifest.skipped.items():
        more = (
            f", ... {len(items) - SUMMARY_EXAMPLES} more" if len(items) > SUMMARY_EXAMPLES else ""
        )
        lines.append(f"  {reason}: {len(items)} ({', '.join(items[:SUMMARY_EXAMPLES])}{more})")
    return "\n".join(lines)
