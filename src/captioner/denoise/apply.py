"""Denoise image files or folders into an output folder, keeping names, formats and modes.

Grey pictures stay grey and transparent ones keep their alpha channel (only the colour is
denoised); palette pictures come back as RGB(A). An output that would replace one of the
inputs is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from captioner.errors import CaptionerError, ImageLoadError
from captioner.fileio import atomic_write_bytes
from captioner.runlog import Progress
from captioner.vision.images import ALLOWED_FORMATS, expand_image_paths, load_image

ImageFn = Callable[[Image.Image], Image.Image]
_GREY = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass
class ApplyReport:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def plan_outputs(files: list[Path], out_dir: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """Pair each input with ``out_dir/<its name>``; refuse clashes and unasked overwrites."""
    pairs, seen = [], {}
    inputs = {f.resolve() for f in files}
    for source in files:
        target = out_dir / source.name
        if target.name in seen:
            raise CaptionerError(
                f"{source} and {seen[target.name]} would both be written to {target}"
            )
        seen[target.name] = source
        if not overwrite and target.resolve() in inputs:
            raise CaptionerError(
                f"{target}: writing there would replace an input image; choose another --out "
                "or pass --overwrite to replace the inputs"
            )
        pairs.append((source, target))
    return pairs


def denoise_file(denoiser: ImageFn, source: Path) -> tuple[Image.Image, str | None]:
    """Denoise one file; return the picture in the source's mode family and its format."""
    rgb = load_image(source)  # robust decode, EXIF rotation, any mode to RGB
    mode, fmt, rgba = _source_mode(source)
    if rgba is not None and rgba.size == rgb.size:
        out = denoiser(rgba.convert("RGB"))  # the raw colour, not composited on white
        out = out.convert("L") if mode in ("LA", "La") else out
        out.putalpha(rgba.getchannel("A"))
        return out, fmt
    out = denoiser(rgb)
    return (out.convert("L") if mode in _GREY else out), fmt


def save_picture(picture: Image.Image, fmt: str | None, target: Path) -> None:
    """Encode like the source (JPEG at quality 95) and write atomically."""
    fmt = fmt or Image.registered_extensions().get(target.suffix.lower(), "PNG")
    if fmt == "JPEG" and picture.mode not in ("L", "RGB"):
        picture = picture.convert("RGB")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    atomic_write_bytes(target, buffer.getvalue())


def apply_denoiser(
    denoiser: ImageFn,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
) -> ApplyReport:
    """Denoise every input image into ``out_dir`` under its own name; bad images are skipped."""
    out_dir = Path(out_dir)
    pairs = plan_outputs(expand_image_paths(inputs), out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ApplyReport()
    started = time.perf_counter()
    for source, target in Progress(
        pairs, desc="denoising", unit="img", disable=not progress, dynamic_ncols=True
    ):
        try:
            picture, fmt = denoise_file(denoiser, source)
        except ImageLoadError as exc:
            report.failed[str(source)] = exc.problem
            continue
        save_picture(picture, fmt, target)
        report.written.append(target)
    report.seconds = time.perf_counter() - started
    return report


def _source_mode(source: Path) -> tuple[str, str | None, Image.Image | None]:
    """The file's mode and format, and its RGBA picture (EXIF-rotated) if it is transparent."""
    with Image.open(source, formats=ALLOWED_FORMATS) as img:
        mode, fmt = img.mode, img.format
        if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            # A broken EXIF block must not reject a good picture.
            with contextlib.suppress(Exception):
                rgba = ImageOps.exif_transpose(rgba)
            return mode, fmt, rgba
        if mode == "P":
            palette_mode = img.palette.mode if img.palette else "RGB"
            return ("L" if palette_mode == "L" else "RGB"), fmt, None
    return mode, fmt, None
