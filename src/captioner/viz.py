"""Figures: per-word attention maps and training loss curves (Agg canvas, no GUI, no pyplot)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

MAX_COLUMNS = 5
PANEL_INCHES = 2.8
DPI = 100
MAX_DISPLAY_SIDE = 320  # images are shrunk to this before plotting; keeps files small and fast


def plot_attention(
    image: Image.Image,
    words: list[str],
    attention: np.ndarray,
    grid: tuple[int, int],
    out_path: Path,
    title: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Write one picture (PNG, or JPEG for a .jpg path): the image with its caption, then one
    attention overlay per word.

    ``attention`` is [T, R] with R = rows * cols of ``grid`` (row-major regions), one row per
    word. ``title`` is the caption shown over the first panel (default: the words joined).
    """
    rows, cols = int(grid[0]), int(grid[1])
    att = np.asarray(attention, dtype=np.float64)
    if att.size == 0:
        att = att.reshape(0, rows * cols)
    if att.ndim != 2 or att.shape != (len(words), rows * cols):
        raise ValueError(
            f"attention has shape {att.shape}, expected ({len(words)}, {rows * cols}) "
            f"for {len(words)} words on a {rows}x{cols} grid"
        )
    shown = _display_copy(image)
    caption = title if title is not None else " ".join(words)

    panels = 1 + len(words)
    ncols = min(MAX_COLUMNS, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(ncols * PANEL_INCHES, nrows * PANEL_INCHES + 0.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()

    axes[0].imshow(shown)
    axes[0].set_title(_wrap(caption, width=26 if ncols > 1 else 40), fontsize=10)
    size = shown.size
    for ax, word, weights in zip(axes[1:], words, att, strict=False):
        ax.imshow(shown)
        ax.imshow(_overlay(_upsample(weights, rows, cols, size)))
        ax.set_title(_wrap(word, width=22, max_lines=2), fontsize=11)
    return _save(fig, out_path, dpi)


def plot_loss_curve(history: list[dict[str, Any]], out_path: Path) -> Path:
    """Plot train and validation loss per epoch, marking the best validation epoch."""
    train = _series(history, "train_loss")
    val = _series(history, "val_loss")
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", markersize=3, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", markersize=3, label="val loss")
        best_epoch, best = min(val, key=lambda point: point[1])
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        ax.plot(
            [best_epoch],
            [best],
            marker="*",
            markersize=14,
            color="tab:red",
            linestyle="",
            label=f"best val {best:.4f} (epoch {best_epoch:g})",
        )
    if not train and not val:
        ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Training curve")
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend(loc="upper right")
    return _save(fig, out_path)


def _display_copy(image: Image.Image) -> Image.Image:
    shown = image.convert("RGB")
    if max(shown.size) > MAX_DISPLAY_SIDE:
        shown = shown.copy()
        shown.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE), Image.Resampling.BICUBIC)
    return shown


def _upsample(weights: np.ndarray, rows: int, cols: int, size: tuple[int, int]) -> np.ndarray:
    """Smoothly resize one word's region weights to ``size`` (w, h), normalised to [0, 1]."""
    grid = np.nan_to_num(weights.reshape(rows, cols), nan=0.0, posinf=0.0, neginf=0.0)
    smooth = Image.fromarray(grid.astype(np.float32), mode="F").resize(
        size, Image.Resampling.BICUBIC
    )
    heat = np.clip(np.asarray(smooth, dtype=np.float64), 0.0, None)
    low, high = float(heat.min()), float(heat.max())
    if high - low < 1e-12:
        return np.zeros_like(heat)
    return (heat - low) / (high - low)


def _overlay(heat: np.ndarray) -> np.ndarray:
    """RGBA heat map: jet colours, more opaque where attention is high."""
    rgba = colormaps["jet"](heat)
    rgba[..., 3] = 0.25 + 0.45 * heat
    return rgba


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for index, item in enumerate(history):
        value = item.get(key)
        if value is None or not math.isfinite(float(value)):
            continue
        points.append((float(item.get("epoch", index + 1)), float(value)))
    return points


def _wrap(text: str, width: int, max_lines: int = 6) -> str:
    text = text.replace("$", r"\$")  # no accidental mathtext
    lines = textwrap.wrap(text, width=width, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, width - 1)] + "…"
    return "\n".join(lines)


def _save(fig: Figure, out_path: Path, dpi: int = DPI) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    jpeg = out_path.suffix.lower() in (".jpg", ".jpeg")
    fig.savefig(out_path, dpi=dpi, format="jpeg" if jpeg else "png")
    fig.clear()
    return out_path


def plot_confusion(
    confusion: np.ndarray | list[list[int]], classes: list[str], out_path: Path, title: str = ""
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts and row shares."""
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.9 * len(classes)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def write_attention_maps(results: list[Any], folder: Path) -> list[Path]:
    """One attention PNG per captioned result (``Captioner.caption`` results with attention),
    named ``NNNN_<stem>.png``; results with an error or no source file are skipped."""
    from captioner.vision.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, result in enumerate(results):
        if result.error or result.source is None:
            continue
        name = f"{index:04d}_{Path(result.source).stem}.png"
        written.append(
            plot_attention(
                load_image(result.source),
                result.tokens,
                result.attention,
                result.grid,
                folder / name,
                title=result.caption,
            )
        )
    return written
