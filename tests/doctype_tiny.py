"""A tiny labelled set of two kinds, written by the tests: rendered text pages and photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORDS = [
    "invoice",
    "total",
    "amount",
    "paid",
    "receipt",
    "date",
    "cash",
    "change",
    "item",
    "price",
    "tax",
    "number",
]


def text_page(seed: int, size: tuple[int, int] = (160, 200)) -> Image.Image:
    """Black lines of words on a white page, like a scanned receipt."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", size, (250, 250, 246))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(4, 12))
    while y < size[1] - 10:
        line = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
        draw.text((int(rng.integers(4, 16)), y), line, fill=(20, 20, 20))
        y += int(rng.integers(10, 16))
    return page


def photo(seed: int, size: tuple[int, int] = (160, 160)) -> Image.Image:
    """A crop of a real photo shipped with scikit-image, recoloured and flipped by the seed."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut, data.coffee, data.chelsea, data.rocket]
    pixels = sources[seed % len(sources)]()
    h, w = pixels.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 0.9))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = pixels[top : top + side, left : left + side].astype(np.float32)
    crop = np.clip(crop * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)
    image = Image.fromarray(crop).resize(size)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if seed % 2 else image


def write_kinds(root: Path, per_source: int = 8, sources: int = 3, start: int = 0) -> Path:
    """``root/Photo`` and ``root/Text``, ``sources`` groups each (file names ``srcN-0001.jpg``)."""
    for kind, make in (("Photo", photo), ("Text", text_page)):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(sources):
            for i in range(per_source):
                seed = start + 1000 * s + i + (0 if kind == "Photo" else 500)
                make(seed).save(folder / f"src{s}-{i:04d}.jpg", quality=90)
    return root


def biased_classifier(folder: Path, backbone: object, favour: str, margin: float = 3.0) -> object:
    """A saved Photo/Text classifier whose head ignores the picture and says ``favour`` with
    probability sigmoid(margin): routing tests know every answer in advance."""
    import torch

    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.doctype.model import DocTypeConfig, DocTypeHead

    classes = ["Photo", "Text"]
    config = DocTypeConfig(
        classes=classes,
        backbone=backbone.name,  # type: ignore[attr-defined]
        backbone_weights_id=backbone.weights_id,  # type: ignore[attr-defined]
        channels=backbone.channels,  # type: ignore[attr-defined]
    )
    head = DocTypeHead(config.channels, len(classes))
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([margin if c == favour else 0.0 for c in classes]))
    DocTypeClassifier(head, config).save_pretrained(folder)
    return DocTypeClassifier.from_pretrained(folder, backbone=backbone)  # type: ignore[arg-type]
