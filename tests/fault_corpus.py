"""A corpus of bad inputs, generated (never downloaded): odd and broken images, bad annotations.

``write_image_corpus`` writes one file per case into a folder and returns the cases; a case's
``problem`` is a fragment of the message ``load_image`` must give, or ``None`` for a file that
is odd but valid (it must decode to an RGB picture). ``write_annotation_corpus`` writes
annotation files whose defects are either fatal (the whole file is refused with one message)
or per entry (the entry is skipped and listed under its reason in the manifest).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: Side of the decompression-bomb PNG: 10000 x 10000 = 1e8 pixels, above the 89.5 M limit.
BOMB_SIDE = 10_000


@dataclass(frozen=True)
class ImageCase:
    name: str
    what: str  # a short description for reports
    problem: str | None  # None: must decode; else a fragment of the refusal message
    size: tuple[int, int] | None = None  # expected decoded (width, height) for valid files


def photo(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB picture (compresses well, decodes the same everywhere)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), 0 * xx], -1)
    cy, cx = (
        rng.integers(height // 4, 3 * height // 4 + 1),
        rng.integers(width // 4, 3 * width // 4 + 1),
    )
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(width, height) // 4) ** 2] = rng.integers(
        0, 256, size=3
    )
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A real, valid ``side`` x ``side`` 1-bit PNG (all black): small file, huge picture."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is garbage (chunk checksums are right)."""
    good = encode(photo(), "PNG")
    start = good.index(b"IDAT") + 4
    length = struct.unpack(">I", good[start - 8 : start - 4])[0]
    garbage = bytes(np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8))
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbage) & 0xFFFFFFFF)
    return good[:start] + garbage + crc + good[start + length + 4 :]


def corrupt_jpeg() -> bytes:
    """A JPEG whose header segments after the start marker are overwritten with garbage."""
    good = bytearray(encode(photo(), "JPEG", quality=90))
    good[2:200] = bytes(np.random.default_rng(2).integers(0, 256, 198, dtype=np.uint8))
    return bytes(good)


def exif_rotated_jpeg() -> bytes:
    """An 80 x 40 JPEG with EXIF orientation 6 (rotate 90°): it must load as 40 x 80."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(80, 40), "JPEG", exif=exif.tobytes(), quality=90)


def _sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _palette_png() -> bytes:
    return encode(photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def _alpha_png() -> bytes:
    img = photo().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return encode(img, "PNG")


IMAGE_BUILDERS: dict[str, tuple[ImageCase, Callable[[], bytes]]] = {
    case.name: (case, build)
    for case, build in [
        (
            ImageCase("ok_photo.jpg", "ordinary RGB JPEG", None, (80, 60)),
            lambda: encode(photo(), "JPEG"),
        ),
        (
            ImageCase("truncated.jpg", "JPEG cut in half", "truncated"),
            lambda: encode(photo(seed=3), "JPEG", quality=95)[:700],
        ),
        (
            ImageCase("truncated.png", "PNG cut in half", "truncated"),
            lambda: (lambda b: b[: len(b) // 2])(encode(photo(seed=4), "PNG")),
        ),
        (ImageCase("corrupt.png", "PNG with garbage pixel data", "corrupt"), corrupt_png),
        (
            ImageCase("corrupt.jpg", "JPEG with garbage header segments", "not an image"),
            corrupt_jpeg,
        ),
        (ImageCase("empty.jpg", "zero-byte file", "empty file"), lambda: b""),
        (
            ImageCase("text.jpg", "a text file named .jpg", "not an image"),
            lambda: b"this is not a picture, only text\n" * 4,
        ),
        (
            ImageCase("cmyk.jpg", "CMYK JPEG", None, (80, 60)),
            lambda: encode(photo().convert("CMYK"), "JPEG"),
        ),
        (ImageCase("gray16.png", "16-bit greyscale PNG", None, (64, 48)), _sixteen_bit_png),
        (
            ImageCase("gray.png", "8-bit greyscale PNG", None, (80, 60)),
            lambda: encode(photo().convert("L"), "PNG"),
        ),
        (ImageCase("palette.png", "palette PNG", None, (80, 60)), _palette_png),
        (ImageCase("alpha.png", "RGBA PNG with a gradient alpha", None, (80, 60)), _alpha_png),
        (
            ImageCase("exif_rotated.jpg", "JPEG with EXIF orientation 6", None, (40, 80)),
            exif_rotated_jpeg,
        ),
        (
            ImageCase("one_pixel.png", "1 x 1 picture", None, (1, 1)),
            lambda: encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        ),
        (
            ImageCase(
                "bomb.png", f"{BOMB_SIDE} x {BOMB_SIDE} PNG (decompression bomb)", "too large"
            ),
            bomb_png,
        ),
    ]
}

IMAGE_CASES: list[ImageCase] = [case for case, _ in IMAGE_BUILDERS.values()]
GOOD_IMAGES = [case.name for case in IMAGE_CASES if case.problem is None]
BAD_IMAGES = [case.name for case in IMAGE_CASES if case.problem is not None]

_BYTES_CACHE: dict[str, bytes] = {}


def image_bytes(name: str) -> bytes:
    """The bytes of one corpus image (built once per process: the bomb takes a moment)."""
    if name not in _BYTES_CACHE:
        _BYTES_CACHE[name] = IMAGE_BUILDERS[name][1]()
    return _BYTES_CACHE[name]


def write_image_corpus(folder: Path, names: list[str] | None = None) -> list[ImageCase]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = [IMAGE_BUILDERS[name][0] for name in names or IMAGE_BUILDERS]
    for case in cases:
        (folder / case.name).write_bytes(image_bytes(case.name))
    return cases


# ------------------------------------------------------------------------------ annotations


@dataclass
class AnnotationCase:
    """An annotation file and what prepare must make of it.

    ``fatal``: a fragment of the one-line error (the whole file is refused); otherwise
    ``skipped`` maps manifest ``skipped`` reasons to fragments that must appear in the list,
    and ``kept`` lists image files that must be in the manifest.
    """

    name: str
    what: str
    content: bytes
    fatal: str | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)


def annotation_cases(images: list[str]) -> list[AnnotationCase]:
    """Annotation files over the corpus ``images`` (the first four get valid captions)."""
    a, b, c, d = images[:4]
    jsonl_lines = [
        json.dumps({"image": a, "caption": "a red circle on a gradient"}),
        json.dumps({"image": b, "caption": ""}),  # empty caption: b left without captions
        '{"image": "broken.jpg", "caption": ',  # malformed JSON line
        json.dumps({"image": c}),  # no caption field
        json.dumps({"image": "absent.jpg", "caption": "a picture that is not there"}),
        json.dumps({"image": d, "caption": "a green disc"}),
        json.dumps({"image": d, "caption": "a green disc"}),  # duplicate caption
        json.dumps(["not", "an", "object"]),
    ]
    csv_lines = [
        "image,caption",
        f"{a},a red circle, seen from above",
        "no comma on this line",
        f"{b},",  # empty caption
        "absent.jpg,a missing picture",
        f'"{d}","a quoted, caption"',
    ]
    coco = {
        "images": [
            {"id": 1, "file_name": a},
            {"id": 2, "file_name": d},
            {"id": 1, "file_name": c},  # duplicated id
            {"file_name": "no_id.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "caption": "a red circle"},
            {"image_id": 2, "caption": "a green disc"},
            {"image_id": 99, "caption": "caption of an unknown image id"},
            {"image_id": 2},
        ],
    }
    token_lines = [f"{a}#0\ta red circle", "garbage line without a tab or hash", f"{d}#0\t   "]
    return [
        AnnotationCase(
            "mixed.jsonl",
            "JSONL: malformed lines, empty captions, missing image, duplicates",
            ("\n".join(jsonl_lines) + "\n").encode(),
            skipped={
                "malformed_line": ["line 3", "line 4", "line 8"],
                "empty_caption": ["line 2"],
                "missing_image": ["absent.jpg"],
                "duplicate_caption": ["line 7"],
                "no_captions": [b],
            },
            kept=[a, d],
        ),
        AnnotationCase(
            "mixed.csv",
            "CSV: malformed line, empty caption, missing image, quoted commas",
            ("\n".join(csv_lines) + "\n").encode(),
            skipped={
                "malformed_line": ["line 3"],
                "empty_caption": ["line 4"],
                "missing_image": ["absent.jpg"],
            },
            kept=[a, d],
        ),
        AnnotationCase(
            "dup_ids.json",
            "COCO: duplicated image id, unknown image id, entries without id or caption",
            json.dumps(coco).encode(),
            skipped={
                "duplicate_id": ["images[2]"],
                "unknown_image": ["annotations[2]"],
                "malformed_entry": ["images[3]", "annotations[3]"],
            },
            kept=[a, d],
        ),
        AnnotationCase(
            "captions.token.txt",
            "Flickr token file with a malformed line and a blank caption",
            ("\n".join(token_lines) + "\n").encode(),
            skipped={"malformed_line": ["line 2"], "empty_caption": ["line 3"]},
            kept=[a],
        ),
        AnnotationCase(
            "latin1.csv",
            "not UTF-8 (Latin-1 bytes)",
            f"{a},une fenêtre ouverte\n".encode("latin-1"),
            fatal="not valid UTF-8",
        ),
        AnnotationCase(
            "broken.json",
            "malformed JSON",
            b'{"images": [{"id": 1, "file_name": "x.jpg"},\n',
            fatal="invalid JSON at line",
        ),
        AnnotationCase("empty.jsonl", "empty file", b"", fatal="no image with a valid caption"),
        AnnotationCase(
            "other.json",
            "JSON that is neither COCO nor Karpathy",
            b'{"hello": "world"}',
            fatal="neither COCO nor Karpathy",
        ),
        AnnotationCase(
            "utf16.txt",
            "UTF-16 text",
            f"{a}#0\ta caption\n".encode("utf-16"),
            fatal="UTF-16",
        ),
    ]


def write_annotation_corpus(folder: Path, images: list[str]) -> list[AnnotationCase]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = annotation_cases(images)
    for case in cases:
        (folder / case.name).write_bytes(case.content)
    return cases
