"""Sample pictures the page offers: demo shapes scenes (always) and skimage photos (if installed).

Samples are made in memory from a fixed list; a client names one by its id and nothing it
sends is ever used as a path.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

#: skimage.data function -> label shown on the page (all ship inside the scikit-image wheel).
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut": "Astronaut",
    "coffee": "Coffee",
    "chelsea": "Cat",
    "rocket": "Rocket",
}
SHAPES_SEEDS: dict[str, int] = {"shapes-1": 1, "shapes-2": 7}


def _shapes(seed: int) -> Callable[[], Image.Image]:
    def make() -> Image.Image:
        from captioner.demo.shapes import render_scene, sample_scene

        rng = np.random.default_rng(seed)
        return render_scene(sample_scene(rng, image_size=448), rng)

    return make


def _skimage(name: str) -> Callable[[], Image.Image]:
    def make() -> Image.Image:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")

    return make


@lru_cache(maxsize=1)
def available_samples() -> dict[str, tuple[str, Callable[[], Image.Image]]]:
    """Sample id -> (label, maker); skimage photos only when scikit-image imports."""
    samples: dict[str, tuple[str, Callable[[], Image.Image]]] = {
        key: (f"Shapes {i}", _shapes(seed))
        for i, (key, seed) in enumerate(SHAPES_SEEDS.items(), start=1)
    }
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return samples
    for name, label in SKIMAGE_PHOTOS.items():
        samples[name] = (label, _skimage(name))
    return samples


THUMB_SIDE = 112


@lru_cache(maxsize=32)
def sample_png(sample_id: str, thumb: bool = False) -> bytes | None:
    """The PNG bytes of a sample (or of its thumbnail), or None for an unknown id."""
    entry = available_samples().get(sample_id)
    if entry is None:
        return None
    image = entry[1]()
    if thumb:
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
