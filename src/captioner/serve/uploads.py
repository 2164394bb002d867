"""Turning uploaded files into pictures, and every way that can fail into an HTTP error.

Status codes (the ``code`` in the error body is stable for clients):

=====  ======================  ===============================================================
413    ``too_large``           a file above the upload limit, or a body above the request limit
413    ``too_many_images``     more files than the per-request limit
415    ``unsupported_image``   not an image, or a format the server does not decode
422    ``empty_image``         an empty file (0 bytes)
422    ``no_image``            no file at all
422    ``corrupt_image``       a truncated or corrupt image, or one with no pixels
422    ``image_too_large``     too many pixels: refused as a possible decompression bomb
=====  ======================  ===============================================================

Uploads are read into memory (Starlette spools big parts to an anonymous temporary file in the
system temp dir); the client's file name is only used in messages, never as a path.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image

from captioner.errors import ImageLoadError
from captioner.serve.errors import ApiError
from captioner.vision.images import load_image_bytes


@dataclass
class Upload:
    name: str
    data: bytes


def safe_name(name: str | None, index: int) -> str:
    """A printable label for an upload (the name as sent, trimmed; never a path on disk)."""
    text = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()
    return text[:120] or f"image {index + 1}"


async def read_uploads(files: list[UploadFile], max_bytes: int, max_images: int) -> list[Upload]:
    """The uploaded files' bytes, refusing no file, too many files and files over ``max_bytes``."""
    if not files:
        raise ApiError(422, "no_image", "no image uploaded: send files in the 'image' field")
    if len(files) > max_images:
        raise ApiError(413, "too_many_images", f"{len(files)} images; at most {max_images}")
    uploads = []
    for index, item in enumerate(files):
        upload = Upload(safe_name(item.filename, index), await item.read(max_bytes + 1))
        check_size(upload, max_bytes)
        uploads.append(upload)
    return uploads


def check_size(upload: Upload, max_bytes: int) -> None:
    if len(upload.data) > max_bytes:
        raise ApiError(
            413,
            "too_large",
            f"{upload.name}: {len(upload.data):,} bytes is above the upload limit of "
            f"{max_bytes:,} bytes",
        )


def decode_upload(upload: Upload, *, max_pixels: int, max_side: int) -> Image.Image:
    """Decode one upload to RGB, shrunk to ``max_side`` (the model sees 224 px anyway)."""
    try:
        image = load_image_bytes(upload.data, upload.name, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise image_error(exc) from None
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def image_error(exc: ImageLoadError) -> ApiError:
    """Map load_image_bytes's problems to status codes (see the module's table)."""
    problem = exc.problem
    if problem.startswith("empty file"):
        return ApiError(422, "empty_image", str(exc))
    if problem.startswith("not an image"):
        return ApiError(415, "unsupported_image", str(exc))
    if "decompression bomb" in problem:
        return ApiError(422, "image_too_large", str(exc))
    return ApiError(422, "corrupt_image", str(exc))
