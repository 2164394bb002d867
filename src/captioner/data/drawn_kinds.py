"""Procedurally drawn document kinds: charts, diagrams, printed pages, sketches, paintings.

Two uses. Training: the real data has few digital charts and printed book pages (its
SOURCES.md), so ``classify train --synthetic N`` adds N drawn charts and diagrams to
Schematics and N printed pages to Text, in training only (validation stays real). Demo: stand-ins
for the five kinds of the chain on embedded data (photos there are the shapes scenes). Every
picture is a pure function of its seed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from captioner.fileio import atomic_write_bytes

_SYLLABLES = [
    "ka",
    "ta",
    "ri",
    "mo",
    "ne",
    "su",
    "lo",
    "pa",
    "de",
    "vi",
    "ro",
    "an",
    "en",
    "us",
    "is",
    "or",
    "te",
    "la",
    "ma",
    "co",
]
_FONTS = ("DejaVu Serif", "DejaVu Sans", "DejaVu Sans Mono", "STIXGeneral", "cmr10")


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 4))))


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    family = str(rng.choice(_FONTS))
    path = font_manager.findfont(
        font_manager.FontProperties(family=family), fallback_to_default=True
    )
    return ImageFont.truetype(path, size)


def _paper(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    if rng.random() < 0.3:  # aged paper
        colour = tuple(int(c) for c in rng.integers([200, 180, 130], [240, 220, 180]))
    else:
        colour = tuple(int(c) for c in rng.integers(235, 256, size=3))
    return Image.new("RGB", size, colour)


def printed_page(seed: int) -> Image.Image:
    """A printed page: a heading, then justified-looking lines of words, in 1 or 2 columns."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(300, 520))
    height = int(width * rng.uniform(1.0, 1.5))
    page = _paper(rng, (width, height))
    draw = ImageDraw.Draw(page)
    ink = tuple(int(c) for c in rng.integers(0, 70, size=3))
    margin = int(rng.integers(10, 40))
    size = int(rng.integers(9, 18))
    font = _font(rng, size)
    y = margin
    if rng.random() < 0.7:
        heading = _font(rng, int(size * rng.uniform(1.4, 2.2)))
        title = " ".join(_word(rng) for _ in range(int(rng.integers(2, 5)))).title()
        draw.text((margin, y), title, fill=ink, font=heading)
        y += int(size * 2.8)
    columns = 2 if rng.random() < 0.35 else 1
    gutter = 16
    col_width = (width - 2 * margin - gutter * (columns - 1)) // columns
    top = y
    for col in range(columns):
        x0, y = margin + col * (col_width + gutter), top
        while y < height - margin - size:
            x = x0 + (size * 2 if rng.random() < 0.08 else 0)
            while True:
                word = _word(rng)
                w = draw.textlength(word + " ", font=font)
                if x + w > x0 + col_width:
                    break
                draw.text((x, y), word, fill=ink, font=font)
                x += w
            y += int(size * rng.uniform(1.25, 1.6))
            if rng.random() < 0.06:
                y += size  # paragraph break
    if rng.random() < 0.5:
        page = page.rotate(float(rng.uniform(-2, 2)), fillcolor=page.getpixel((0, 0)))
    return page


def chart(seed: int) -> Image.Image:
    """A bar, line, pie or scatter chart drawn by matplotlib."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(rng.uniform(3.5, 6), rng.uniform(2.8, 4.5)), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    kind = int(rng.integers(0, 4))
    n = int(rng.integers(3, 9))
    labels = [_word(rng)[:6] for _ in range(n)]
    values = rng.uniform(1, 10, size=n)
    if kind == 0:
        ax.bar(labels, values, color=[tuple(c) for c in rng.uniform(0.1, 0.9, size=(n, 3))])
    elif kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(
                np.cumsum(rng.normal(0, 1, size=n * 3)), marker="o" if rng.random() < 0.5 else ""
            )
        ax.grid(rng.random() < 0.6)
    elif kind == 2:
        ax.pie(values, labels=labels, autopct="%d%%" if rng.random() < 0.6 else None)
    else:
        ax.scatter(rng.normal(size=n * 10), rng.normal(size=n * 10), s=8)
    if kind != 2:
        ax.set_xlabel(_word(rng))
        ax.set_ylabel(_word(rng))
    ax.set_title(" ".join(_word(rng) for _ in range(2)).title())
    fig.tight_layout()
    canvas = fig.canvas
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def diagram(seed: int) -> Image.Image:
    """A flowchart: labelled boxes and ellipses joined by lines, drawn or hand-wobbled."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(320, 520)), int(rng.integers(260, 420)))
    page = _paper(rng, size)
    draw = ImageDraw.Draw(page)
    ink = tuple(int(c) for c in rng.integers(0, 90, size=3))
    font = _font(rng, int(rng.integers(9, 14)))
    nodes = []
    for _ in range(int(rng.integers(4, 9))):
        x, y = int(rng.integers(20, size[0] - 90)), int(rng.integers(20, size[1] - 50))
        w, h = int(rng.integers(50, 90)), int(rng.integers(24, 44))
        box = (x, y, x + w, y + h)
        if rng.random() < 0.3:
            draw.ellipse(box, outline=ink, width=2)
        else:
            draw.rectangle(box, outline=ink, width=2)
        draw.text((x + 5, y + h // 3), _word(rng)[:8], fill=ink, font=font)
        nodes.append((x + w // 2, y + h // 2))
    for a, b in zip(nodes, nodes[1:], strict=False):
        draw.line([a, (a[0], b[1]), b] if rng.random() < 0.5 else [a, b], fill=ink, width=2)
    if rng.random() < 0.5:
        page = page.filter(ImageFilter.GaussianBlur(0.6))
    return page


def sketch(seed: int) -> Image.Image:
    """Dark pen strokes on white: a few wobbly closed shapes and lines."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (256, 256), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for _ in range(int(rng.integers(3, 8))):
        centre = rng.uniform(50, 206, size=2)
        radius = rng.uniform(15, 70)
        angles = np.linspace(0, 2 * np.pi, int(rng.integers(8, 20)))
        wobble = radius * rng.uniform(0.7, 1.3, size=len(angles))
        points = [
            (float(centre[0] + r * np.cos(t)), float(centre[1] + r * np.sin(t)))
            for r, t in zip(wobble, angles, strict=True)
        ]
        draw.line(points, fill=(0, 0, 0), width=int(rng.integers(1, 4)))
    return page


def painting(seed: int) -> Image.Image:
    """Overlapping soft colour strokes, like brushwork."""
    rng = np.random.default_rng(seed)
    base = tuple(int(c) for c in rng.integers(30, 220, size=3))
    page = Image.new("RGB", (256, 256), base)
    draw = ImageDraw.Draw(page)
    for _ in range(int(rng.integers(60, 160))):
        x, y = rng.uniform(0, 256, size=2)
        dx, dy = rng.normal(0, 25, size=2)
        colour = tuple(
            int(c) for c in np.clip(np.asarray(base) + rng.normal(0, 70, size=3), 0, 255)
        )
        draw.line([(x, y), (x + dx, y + dy)], fill=colour, width=int(rng.integers(4, 16)))
    return page.filter(ImageFilter.GaussianBlur(1.2))


#: Training supplements: generator name -> (drawing function, default class).
SUPPLEMENTS: dict[str, tuple[Callable[[int], Image.Image], str]] = {
    "chart": (chart, "Schematics"),
    "diagram": (diagram, "Schematics"),
    "page": (printed_page, "Text"),
}


def write_supplements(
    folder: Path, per_generator: int, classes: list[str], seed: int = 0
) -> list[tuple[Path, str]]:
    """Draw ``per_generator`` pictures of each supplement whose class is in ``classes`` into
    ``folder/<class>/synth-<gen>-NNNN.png`` (kept when already there); return (path, class)."""
    written = []
    for offset, (name, (draw, label)) in enumerate(SUPPLEMENTS.items()):
        if label not in classes:
            continue
        target = folder / label
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_generator):
            path = target / f"synth-{name}-{i:04d}.png"
            if not path.is_file():
                buffer = io.BytesIO()
                draw(seed * 1_000_003 + offset * 100_000 + i).save(buffer, format="PNG")
                atomic_write_bytes(path, buffer.getvalue())
            written.append((path, label))
    return written
