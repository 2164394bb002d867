"""The shapes dataset: deterministic, two references per image, captions match the pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.demo.shapes import (
    COLORS,
    SIZES,
    Scene,
    describe_scene,
    generate_shapes_dataset,
    sample_scene,
)
from captioner.errors import CaptionerError

PHRASE = r"(small|large) (red|green|blue|yellow) (circle|square|triangle)"
CAPTION = re.compile(rf"^a {PHRASE} (above|below|to the left of|to the right of) a {PHRASE}$")
NUM = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_images=NUM, seed=3)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_counts_and_two_captions_per_image(dataset: Path) -> None:
    assert dataset.name == "captions.jsonl"
    rows = _read_jsonl(dataset)
    assert len(rows) == 2 * NUM
    by_image: dict[str, list[str]] = {}
    for row in rows:
        assert set(row) == {"image", "caption"}
        assert CAPTION.match(row["caption"]), row["caption"]
        by_image.setdefault(row["image"], []).append(row["caption"])
    assert sorted(by_image) == [f"shape_{i:05d}.png" for i in range(NUM)]
    assert all(len(set(caps)) == 2 for caps in by_image.values())
    pngs = sorted(p.name for p in (dataset.parent / "images").glob("*.png"))
    assert pngs == sorted(by_image)
    with Image.open(dataset.parent / "images" / pngs[0]) as img:
        assert img.size == (224, 224) and img.mode == "RGB"


def test_deterministic_for_a_seed(dataset: Path, tmp_path: Path) -> None:
    again = generate_shapes_dataset(tmp_path / "again", num_images=NUM, seed=3)
    assert again.read_bytes() == dataset.read_bytes()
    for name in ("shape_00000.png", "shape_00017.png"):
        assert (again.parent / "images" / name).read_bytes() == (
            dataset.parent / "images" / name
        ).read_bytes()
    other = generate_shapes_dataset(tmp_path / "other", num_images=NUM, seed=4)
    assert other.read_bytes() != dataset.read_bytes()


def test_captions_describe_the_drawn_scene(dataset: Path) -> None:
    captions: dict[str, list[str]] = {}
    for row in _read_jsonl(dataset):
        captions.setdefault(row["image"], []).append(row["caption"])
    for row in _read_jsonl(dataset.parent / "scenes.jsonl"):
        first, second = row["first"], row["second"]
        pixels = np.asarray(Image.open(dataset.parent / "images" / row["image"]), dtype=float)
        for shape in (first, second):
            x, y = (int(v) for v in shape["center"])
            assert _nearest_color(pixels[y, x], row["background"]) == shape["color"]
        (x1, y1), (x2, y2) = first["center"], second["center"]
        if row["relation"] == "above":
            assert y2 - y1 > 2 * abs(x2 - x1)
            expected = (
                f"a {_phrase(first)} above a {_phrase(second)}",
                f"a {_phrase(second)} below a {_phrase(first)}",
            )
        else:
            assert x2 - x1 > 2 * abs(y2 - y1)
            expected = (
                f"a {_phrase(first)} to the left of a {_phrase(second)}",
                f"a {_phrase(second)} to the right of a {_phrase(first)}",
            )
        assert sorted(captions[row["image"]]) == sorted(expected)


def test_sampled_scenes_are_valid_and_unambiguous() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        scene = sample_scene(rng, 224)
        a, b = scene.first, scene.second
        assert (a.kind, a.color, a.size) != (b.kind, b.color, b.size)
        for shape in (a, b):
            x, y = shape.center
            assert shape.radius <= min(x, y, 224 - x, 224 - y)
        axis = 1 if scene.relation == "above" else 0
        gap = b.center[axis] - a.center[axis] - a.radius - b.radius
        assert gap >= 15  # bounding boxes apart along the relation axis: no overlap
        seen.add((scene.relation, a.kind, a.color, a.size))
        assert len(describe_scene(scene)) == 2
    assert len(seen) == 2 * 3 * 4 * 2  # every combination occurs
    assert SIZES["large"] >= 2 * SIZES["small"]


def test_scene_round_trips_and_bad_arguments(tmp_path: Path) -> None:
    scene = sample_scene(np.random.default_rng(5), 224)
    assert isinstance(scene, Scene)
    assert scene.to_dict()["first"]["kind"] == scene.first.kind
    with pytest.raises(CaptionerError):
        generate_shapes_dataset(tmp_path, num_images=0)
    with pytest.raises(CaptionerError):
        generate_shapes_dataset(tmp_path, num_images=2, image_size=16)


def _phrase(shape: dict) -> str:
    return f"{shape['size']} {shape['color']} {shape['kind']}"


def _nearest_color(pixel: np.ndarray, background: list[int]) -> str:
    palette = {
        **{k: np.array(v, dtype=float) for k, v in COLORS.items()},
        "background": np.array(background, dtype=float),
    }
    return min(palette, key=lambda name: float(np.sum((palette[name] - pixel) ** 2)))
