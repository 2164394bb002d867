"""Robust image loading: any common file becomes an 8-bit RGB picture or an ImageLoadError.

Every image is fully decoded (so truncated files fail here, not later in a worker), rotated by
its EXIF orientation, and converted to RGB: grey, 1-bit, palette, CMYK, 16-bit and float
images are scaled to 8 bits, and transparent pixels are composited on white.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError, ImageLoadError

#: Largest image accepted, in pixels (Pillow's own default). ``None`` disables the check.
MAX_IMAGE_PIXELS: int | None = 89_478_485

#: Pillow decoders we accept; others (EPS runs Ghostscript, PSD, FITS, ...) are refused.
ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "WEBP",
    "PPM",
    "TGA",
    "ICO",
    "JPEG2000",
    "AVIF",
    "QOI",
)

_FULL_SIZE = "captioner_full_size"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255, 255)


def load_image(
    path: str | Path, *, max_pixels: int | None = None, at_least: int | None = None
) -> Image.Image:
    """Load an image file as RGB; raise ImageLoadError naming the file and the problem.

    ``max_pixels`` overrides the module's ``MAX_IMAGE_PIXELS`` (0 disables the limit; Pillow's
    own hard limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies). ``at_least``: the
    caller only needs this many pixels on each side, so a JPEG at least twice as large is
    decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled decoding: the whole
    stream is still read, so truncated files still fail); :func:`full_size` gives the size of
    the file's picture.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageLoadError(path, "is a folder, not an image file")
        with open(path, "rb") as handle:
            return _decode(handle, path, size, max_pixels, at_least)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read the file ({exc.strerror or exc})") from None


def load_image_bytes(
    data: bytes, name: str, *, max_pixels: int | None = None, at_least: int | None = None
) -> Image.Image:
    """Decode an uploaded image (``name`` is used in error messages) with load_image's rules."""
    return _decode(io.BytesIO(data), name, len(data), max_pixels, at_least)


def full_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the file's picture, upright, also when it was decoded reduced."""
    size = image.info.get(_FULL_SIZE)
    return (int(size[0]), int(size[1])) if size else image.size


def _decode(
    handle: IO[bytes],
    label: str | Path,
    size: int,
    max_pixels: int | None,
    at_least: int | None = None,
) -> Image.Image:
    if size == 0:
        raise ImageLoadError(label, "empty file (0 bytes)")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(handle, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        problem = f"image too large, refused as a decompression bomb ({exc})"
        raise ImageLoadError(label, problem) from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image, or an unsupported image format") from None
    except Exception as exc:  # Pillow raises many types on malformed headers.
        raise ImageLoadError(
            label, f"corrupt or truncated image header ({_describe(exc)})"
        ) from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageLoadError(label, f"image has no pixels ({width}x{height})")
        if limit and width * height > limit:
            raise ImageLoadError(
                label,
                f"image too large ({width}x{height} = {width * height} pixels, limit {limit}); "
                "refused as a possible decompression bomb",
            )
        if at_least and img.format == "JPEG":
            img.draft(None, (at_least, at_least))
        reduced = img.size
        try:
            img.load()  # full decode: truncated or corrupt data fails here
        except Exception as exc:
            raise ImageLoadError(label, f"truncated or corrupt image ({_describe(exc)})") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block must not reject a good picture
            img = img.copy()
        try:
            rgb = to_rgb(img)
        except Exception as exc:
            raise ImageLoadError(
                label, f"cannot convert {img.mode} image to RGB ({_describe(exc)})"
            ) from None
        if reduced != (width, height):
            turned = rgb.size != reduced  # EXIF orientation swapped the sides
            rgb.info[_FULL_SIZE] = (height, width) if turned else (width, height)
        return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, high depth scaled)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), mode="L").convert("RGB")
    if mode == "P" or ("transparency" in img.info and mode in ("L", "RGB", "1")):
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grey values to 0..255 without clipping."""
    values = array.astype(np.float64)
    if mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        else:
            scaled = (values - low) / max(high - low, 1e-12) * 255.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low >= 0 and high <= 65535:
            scaled = values / 257.0  # 16-bit range (also "I" images decoded from 16-bit files)
        else:
            scaled = (values - low) / max(high - low, 1.0) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def expand_image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, non-recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CaptionerError(f"{item}: no image files in this folder")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise CaptionerError(f"{item}: no such file or folder")
    return files
