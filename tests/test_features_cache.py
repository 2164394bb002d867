"""FeatureCache: layout, crash-safe status, and refusal of mismatched or broken caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from captioner.errors import CacheMismatchError, CaptionerError
from captioner.features.cache import FeatureCache

HEADER: dict[str, Any] = {
    "backbone": "tiny",
    "weights_id": "abc",
    "preprocessing": {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "grid": [2, 3],
    "channels": 4,
}
KEYS = ["a.jpg", "b.jpg", "c.jpg"]


def _feats(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 6, 4)).astype(np.float16)


def test_create_write_flush_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    cache = FeatureCache.create(folder, HEADER, KEYS)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["failures.json", "features.npy", "header.json", "status.npy"]
    header = json.loads((folder / "header.json").read_text())
    assert header["format"] == "captioner-features" and header["version"] == 1
    assert header["shape"] == [3, 6, 4] and header["dtype"] == "float16"
    assert header["keys"] == KEYS and header["weights_id"] == "abc"
    assert len(cache) == 3 and not cache.is_complete()
    feats = _feats(2)
    cache.write([2, 0], feats)
    cache.mark_failed("b.jpg", "not an image")
    cache.flush()

    again = FeatureCache.open(folder, expected=HEADER)
    assert again.status.tolist() == [1, 2, 1]
    assert again.is_complete()
    assert again.valid_indices().tolist() == [0, 2]
    assert again.index_of("c.jpg") == 2
    np.testing.assert_array_equal(again.features(2), feats[0])
    np.testing.assert_array_equal(again.features(0), feats[1])
    assert again.features(0).dtype == np.float16
    assert again.failures() == {"b.jpg": "not an image"}
    with pytest.raises(CaptionerError, match="'b.jpg' are failed"):
        again.features(1)
    with pytest.raises(CaptionerError, match="no features for image 'z.jpg'"):
        again.index_of("z.jpg")
    with pytest.raises(CaptionerError, match="read-only"):
        again.write([1], _feats(1))
    with pytest.raises(ValueError):
        again.status[0] = 0


def test_status_only_claims_flushed_rows(tmp_path: Path) -> None:
    cache = FeatureCache.create(tmp_path, HEADER, KEYS)
    cache.write([0], _feats(1))
    cache.flush()
    cache.write([1], _feats(1, seed=1))  # "killed" before the next flush
    assert FeatureCache.open(tmp_path).status.tolist() == [1, 0, 0]


def test_write_clears_an_old_failure(tmp_path: Path) -> None:
    cache = FeatureCache.create(tmp_path, HEADER, KEYS)
    cache.mark_failed("a.jpg", "broken")
    cache.write([0], _feats(1))
    cache.flush()
    assert FeatureCache.open(tmp_path).failures() == {}


def test_mismatched_header_is_refused(tmp_path: Path) -> None:
    FeatureCache.create(tmp_path / "c", HEADER, KEYS)
    FeatureCache.open(tmp_path / "c", expected={**HEADER, "keys": ["other"], "shape": [1]})
    for field, value in [("weights_id", "xyz"), ("backbone", "resnet50"), ("grid", (7, 7))]:
        with pytest.raises(CacheMismatchError, match=f"c: .*{field}=") as info:
            FeatureCache.open(tmp_path / "c", expected={**HEADER, field: value})
        assert str(tmp_path / "c") in str(info.value)
    other = {**HEADER, "preprocessing": {**HEADER["preprocessing"], "image_size": 299}}
    with pytest.raises(CacheMismatchError, match="preprocessing"):
        FeatureCache.open(tmp_path / "c", expected=other)


def test_broken_caches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="header.json missing"):
        FeatureCache.open(tmp_path / "nothing")
    folder = tmp_path / "c"
    FeatureCache.create(folder, HEADER, KEYS)
    with pytest.raises(CaptionerError, match="already exists"):
        FeatureCache.create(folder, HEADER, KEYS)
    np.save(folder / "features.npy", np.zeros((2, 6, 4), dtype=np.float16))
    with pytest.raises(CaptionerError, match="half-written"):
        FeatureCache.open(folder)
    (folder / "features.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CaptionerError, match="corrupt"):
        FeatureCache.open(folder)
    (folder / "header.json").write_text("{not json")
    with pytest.raises(CaptionerError, match="header.json: corrupt"):
        FeatureCache.open(folder)
    with pytest.raises(CaptionerError, match="duplicate"):
        FeatureCache.create(tmp_path / "d", HEADER, ["a", "a"])


def test_half_created_cache_can_be_created_again(tmp_path: Path) -> None:
    cache = FeatureCache.create(tmp_path, HEADER, KEYS)
    del cache
    (tmp_path / "header.json").unlink()  # crash before the header was written
    with pytest.raises(CaptionerError, match="header.json missing"):
        FeatureCache.open(tmp_path)
    assert len(FeatureCache.create(tmp_path, HEADER, KEYS)) == 3
