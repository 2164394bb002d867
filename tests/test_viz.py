"""viz: attention grids and loss curves are valid PNGs, and no figure is left open."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from captioner.viz import _upsample, plot_attention, plot_loss_curve  # noqa: E402


def _image(width: int = 320, height: int = 240) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _attention(steps: int, regions: int = 49) -> np.ndarray:
    att = np.random.default_rng(1).random((steps, regions))
    return att / att.sum(axis=1, keepdims=True)


def _open_png(path: Path) -> Image.Image:
    assert path.is_file()
    with Image.open(path) as img:
        img.verify()
    img = Image.open(path)
    assert img.format == "PNG"
    return img


def test_attention_png_has_one_panel_per_word(tmp_path: Path) -> None:
    before = len(plt.get_fignums())
    words = ["a", "large", "red", "circle", "above", "a", "small", "blue", "square"]
    out = plot_attention(_image(), words, _attention(len(words)), (7, 7), tmp_path / "a" / "x.png")
    assert out == tmp_path / "a" / "x.png"
    width, height = _open_png(out).size
    assert 1000 <= width <= 1600  # 5 columns
    assert 400 <= height <= 1000  # 2 rows
    assert len(plt.get_fignums()) == before


def test_attention_without_words_and_with_long_caption(tmp_path: Path) -> None:
    before = len(plt.get_fignums())
    empty = plot_attention(_image(), [], np.zeros((0, 49)), (7, 7), tmp_path / "empty.png")
    width, height = _open_png(empty).size
    assert 150 <= width <= 500 and 150 <= height <= 500
    words = [f"word{i}" for i in range(23)] + ["$5", "extraordinarilylongwordwithoutanybreaks"]
    long = plot_attention(
        _image(1600, 900),
        words,
        _attention(len(words), 12),
        (3, 4),
        tmp_path / "long.png",
        title=" ".join(words) * 3,
    )
    width, height = _open_png(long).size
    assert width <= 1600 and 1000 <= height <= 3000
    assert len(plt.get_fignums()) == before


def test_attention_shape_mismatch_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected"):
        plot_attention(_image(), ["a", "b"], _attention(3), (7, 7), tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected"):
        plot_attention(_image(), ["a"], _attention(1, 36), (7, 7), tmp_path / "x.png")


def test_attention_map_is_upsampled_smoothly() -> None:
    weights = np.zeros(49)
    weights[3 * 7 + 3] = 1.0  # the centre cell
    heat = _upsample(weights, 7, 7, (224, 224))
    assert heat.shape == (224, 224)
    assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)
    assert np.unravel_index(heat.argmax(), heat.shape) in {
        (111, 111),
        (111, 112),
        (112, 111),
        (112, 112),
    }
    assert len(np.unique(np.round(heat, 4))) > 200  # a gradient, not 49 flat blocks
    assert np.all(_upsample(np.full(49, 1 / 49), 7, 7, (50, 40)) == 0.0)


def test_loss_curve_with_and_without_validation(tmp_path: Path) -> None:
    before = len(plt.get_fignums())
    history = [
        {"epoch": e, "train_loss": 3.0 / e, "val_loss": 3.2 / e + 0.05 * e, "lr": 1e-3}
        for e in range(1, 9)
    ]
    size = _open_png(plot_loss_curve(history, tmp_path / "loss.png")).size
    assert 400 <= size[0] <= 1200 and 300 <= size[1] <= 900
    train_only = [{"epoch": 1, "train_loss": 2.3}, {"epoch": 2, "train_loss": 2.0}]
    _open_png(plot_loss_curve(train_only, tmp_path / "train.png"))
    _open_png(plot_loss_curve([], tmp_path / "none.png"))
    assert len(plt.get_fignums()) == before
