"""A procedural captioning dataset: two coloured shapes in a clear spatial relation.

Every scene has two shapes, each with a size (small / large), a colour (red, green, blue,
yellow) and a kind (circle, square, triangle), placed one above the other or side by side.
Each image gets two reference captions, e.g. "a large red circle above a small blue square"
and "a small blue square below a large red circle".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.errors import CaptionerError

KINDS = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "green": (34, 160, 62),
    "blue": (36, 78, 216),
    "yellow": (238, 200, 22),
}
SIZES: dict[str, float] = {"small": 18 / 224, "large": 40 / 224}  # radius / image side
RELATIONS = ("above", "left of")  # how the first shape relates to the second
MARGIN = 0.04  # border kept free, fraction of the image side
MIN_GAP = 0.08  # smallest gap between the two shapes' bounding boxes
CROSS_JITTER = 0.08  # offset from the centre line across the relation axis
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Shape:
    """One drawn shape; ``center`` is (x, y) in pixels of the final image."""

    kind: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """Two shapes: ``first`` is above / to the left of ``second`` (see ``relation``)."""

    first: Shape
    second: Shape
    relation: str
    background: tuple[int, int, int]
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def describe_scene(scene: Scene) -> list[str]:
    """The two reference captions of a scene (from each shape's point of view)."""
    a, b = scene.first.phrase, scene.second.phrase
    if scene.relation == "above":
        return [f"a {a} above a {b}", f"a {b} below a {a}"]
    return [f"a {a} to the left of a {b}", f"a {b} to the right of a {a}"]


def sample_scene(rng: np.random.Generator, image_size: int = 224) -> Scene:
    """Draw random attributes and a non-overlapping placement for two shapes."""
    first = _attributes(rng)
    second = _attributes(rng)
    while second == first:  # the two shapes must differ in at least one attribute
        second = _attributes(rng)
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    size = float(image_size)
    r1, r2 = SIZES[first[2]] * size, SIZES[second[2]] * size
    margin, gap = MARGIN * size, MIN_GAP * size
    slack = size - 2 * margin - 2 * r1 - 2 * r2 - gap
    cuts = np.sort(rng.uniform(0.0, slack, size=2))
    main1 = margin + cuts[0] + r1
    main2 = main1 + r1 + gap + (cuts[1] - cuts[0]) + r2
    cross1, cross2 = (_cross(rng, r, size, margin) for r in (r1, r2))
    vertical = relation == "above"
    c1 = (cross1, main1) if vertical else (main1, cross1)
    c2 = (cross2, main2) if vertical else (main2, cross2)
    base = rng.integers(224, 250, size=3)
    return Scene(
        first=Shape(first[0], first[1], first[2], _round(c1), r1),
        second=Shape(second[0], second[1], second[2], _round(c2), r2),
        relation=relation,
        background=(int(base[0]), int(base[1]), int(base[2])),
        image_size=image_size,
    )


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw a scene anti-aliased (at 2x, then box-downsampled); ``rng`` varies the shading."""
    side = scene.image_size * SUPERSAMPLE
    ramp = np.linspace(-1.0, 1.0, side) * rng.uniform(0.0, 6.0)
    ramp2d = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    pixels = np.asarray(scene.background, dtype=np.float64)[None, None, :] + ramp2d[..., None]
    pixels = np.broadcast_to(pixels, (side, side, 3))
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    for shape in (scene.first, scene.second):
        fill = np.clip(np.array(COLORS[shape.color]) + rng.integers(-10, 11, size=3), 0, 255)
        _draw_shape(draw, shape, tuple(int(v) for v in fill))
    return canvas.reduce(SUPERSAMPLE)


def generate_shapes_dataset(
    out_dir: Path, num_images: int = 1200, seed: int = 0, image_size: int = 224
) -> Path:
    """Write ``images/shape_NNNNN.png``, ``captions.jsonl`` and ``scenes.jsonl``.

    Two caption lines per image ({"image": ..., "caption": ...}); returns the captions path.
    Image ``i`` depends only on ``seed`` and ``i``.
    """
    if num_images < 1:
        raise CaptionerError(f"num_images must be at least 1, got {num_images}")
    if image_size < 64:
        raise CaptionerError(f"image_size must be at least 64 pixels, got {image_size}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    caption_lines, scene_lines = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        scene = sample_scene(rng, image_size)
        name = f"shape_{index:05d}.png"
        render_scene(scene, rng).save(images / name, compress_level=1)
        for caption in describe_scene(scene):
            caption_lines.append(json.dumps({"image": name, "caption": caption}))
        scene_lines.append(json.dumps({"image": name, **scene.to_dict()}))
    (out_dir / "scenes.jsonl").write_text("\n".join(scene_lines) + "\n", encoding="utf-8")
    captions = out_dir / "captions.jsonl"
    captions.write_text("\n".join(caption_lines) + "\n", encoding="utf-8")
    return captions


def _attributes(rng: np.random.Generator) -> tuple[str, str, str]:
    kind = KINDS[int(rng.integers(len(KINDS)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    return kind, color, size


def _cross(rng: np.random.Generator, radius: float, size: float, margin: float) -> float:
    value = size / 2 + rng.uniform(-CROSS_JITTER, CROSS_JITTER) * size
    return float(np.clip(value, margin + radius, size - margin - radius))


def _round(point: tuple[float, float]) -> tuple[float, float]:
    return (round(float(point[0]), 2), round(float(point[1]), 2))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill: tuple[int, ...]) -> None:
    k = SUPERSAMPLE
    cx, cy, r = shape.center[0] * k, shape.center[1] * k, shape.radius * k
    outline = tuple(int(v * 0.6) for v in fill)
    width = k
    if shape.kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif shape.kind == "square":
        h = r * 0.88  # about the same area as the circle
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill, outline=outline, width=width)
    else:
        points = [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
        draw.polygon(points, fill=fill, outline=outline, width=width)
