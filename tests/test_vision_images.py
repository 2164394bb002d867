"""load_image: every common image flavour becomes RGB, every broken file an ImageLoadError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.errors import CaptionerError, ImageLoadError
from captioner.vision import images
from captioner.vision.images import load_image, load_image_bytes


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _assert_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    return np.asarray(img)


def test_grayscale_and_one_bit(tmp_path: Path) -> None:
    grey = Image.new("L", (10, 8), 77)
    out = _assert_rgb(load_image(_save(grey, tmp_path / "g.png")), (10, 8))
    assert (out == 77).all()
    bit = Image.new("1", (5, 4), 1)
    out = _assert_rgb(load_image(_save(bit, tmp_path / "b.png")), (5, 4))
    assert (out == 255).all()


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = _save(img, tmp_path / "p.png", transparency=0)
    out = _assert_rgb(load_image(path), (4, 4))
    assert tuple(out[0, 0]) == (0, 0, 255)  # opaque blue kept
    assert tuple(out[1, 1]) == (255, 255, 255)  # transparent red became white


def test_rgba_and_la_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = _assert_rgb(load_image(_save(rgba, tmp_path / "a.png")), (3, 2))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert 120 <= out[0, 1, 0] <= 135
    assert tuple(out[1, 2]) == (255, 255, 255)
    la = Image.new("LA", (3, 2), (0, 0))
    out = _assert_rgb(load_image(_save(la, tmp_path / "la.png")), (3, 2))
    assert (out == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    out = _assert_rgb(load_image(_save(img, tmp_path / "c.jpg", quality=95)), (16, 16))
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = _assert_rgb(load_image(path), (5, 1))
    assert out[0, :, 0].tolist() == [0, 1, 4, 128, 255]


def test_float_image(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = _assert_rgb(load_image(_save(Image.fromarray(values, "F"), tmp_path / "f.tif")), (3, 1))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_large_jpeg_decoded_reduced_to_what_is_needed(tmp_path: Path) -> None:
    smooth = Image.linear_gradient("L").resize((1000, 600)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(smooth, tmp_path / "big.jpg", quality=95, exif=exif.tobytes())
    whole = load_image(path)
    reduced = load_image(path, at_least=224)
    assert whole.size == (600, 1000) and images.full_size(whole) == (600, 1000)
    assert reduced.size == (300, 500)  # 1/2 scale: the largest still >= 224 on both sides
    assert images.full_size(reduced) == (600, 1000)
    # the same picture, only smaller: resized to 224 px the two agree to a few levels
    a = np.asarray(whole.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.int16)
    b = np.asarray(reduced.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(a - b).mean() < 2.0
    png = _save(smooth, tmp_path / "big.png")
    assert load_image(png, at_least=224).size == (1000, 600)  # only JPEGs scale in decoding
    data = path.read_bytes()
    cut = tmp_path / "cut-big.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(cut, at_least=64)


def test_one_pixel(tmp_path: Path) -> None:
    _assert_rgb(load_image(_save(Image.new("RGB", (1, 1), 3), tmp_path / "one.png")), (1, 1))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    _noise((96, 96)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_empty_and_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG\n")
    with pytest.raises(ImageLoadError, match="not an image") as info:
        load_image(tmp_path / "text.jpg")
    assert "text.jpg" in str(info.value)
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (100, 100)), tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path, max_pixels=9_999)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(ImageLoadError, match="bomb"):
        load_image(path)
    assert load_image(path, max_pixels=0).size == (100, 100)
    # Pillow's own hard limit (twice its setting) also becomes an ImageLoadError.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ImageLoadError, match="bomb"):
        load_image(path, max_pixels=0)


def test_load_image_bytes() -> None:
    buffer = io.BytesIO()
    Image.new("LA", (6, 5), (0, 255)).save(buffer, format="PNG")
    out = _assert_rgb(load_image_bytes(buffer.getvalue(), "upload.png"), (6, 5))
    assert (out == 0).all()
    with pytest.raises(ImageLoadError, match="upload.jpg: empty"):
        load_image_bytes(b"", "upload.jpg")
    with pytest.raises(CaptionerError, match="upload.jpg: not an image"):
        load_image_bytes(b"GIF? no", "upload.jpg")


def test_real_photos(shared_data: Path) -> None:
    folder = shared_data / "ucm-captions" / "images"
    paths = sorted(folder.glob("*.jpg"))[:3]
    if not paths:
        pytest.skip("no UCM images")
    for path in paths:
        assert load_image(path).mode == "RGB"
