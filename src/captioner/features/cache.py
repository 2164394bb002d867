"""One feature cache per split: a float16 memmap [N, R, C] plus per-item status.

Folder layout: ``header.json`` (backbone header, shape, keys), ``features.npy`` (float16),
``status.npy`` (uint8: 0 not done, 1 ok, 2 failed) and ``failures.json`` (key -> problem).
``flush()`` syncs the features before it rewrites the status, so a crash can lose work but
never leaves a row marked done that is not on disk.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captioner.errors import CacheMismatchError, CaptionerError
from captioner.fileio import atomic_write_bytes, atomic_write_json

FORMAT = "captioner-features"
VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
_FILES = ("header.json", "features.npy", "status.npy", "failures.json")
_NOT_COMPARED = {"keys", "shape", "dtype", "format", "version"}


class FeatureCache:
    """Features of one split, addressed by key (image file name) or row index."""

    def __init__(
        self,
        folder: Path,
        header: dict[str, Any],
        array: np.memmap,
        status: np.ndarray,
        failures: dict[str, str],
    ) -> None:
        self.folder = folder
        self.header = header
        self.array = array
        self._status = status
        self._failures = failures
        self._keys: list[str] = list(header["keys"])
        self._index = {key: i for i, key in enumerate(self._keys)}
        self._dirty = False

    @classmethod
    def create(cls, folder: str | Path, header: dict[str, Any], keys: list[str]) -> FeatureCache:
        """Make an empty cache for ``keys`` with a backbone ``header`` (needs grid, channels)."""
        folder = Path(folder)
        if (folder / "header.json").exists():
            raise CaptionerError(f"{folder}: a feature cache already exists there")
        if len(set(keys)) != len(keys):
            raise CaptionerError(f"{folder}: duplicate image keys given to the feature cache")
        try:
            regions = int(header["grid"][0]) * int(header["grid"][1])
            shape = (len(keys), regions, int(header["channels"]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CaptionerError(
                "feature cache header needs 'grid' [h, w] and 'channels'"
            ) from None
        full = {"format": FORMAT, "version": VERSION, **header}
        full.update(dtype="float16", shape=list(shape), keys=list(keys))
        folder.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(
            folder / "features.npy", mode="w+", dtype=np.float16, shape=shape
        )
        status = np.zeros(len(keys), dtype=np.uint8)
        cache = cls(folder, full, array, status, {})
        cache._dirty = True
        cache.flush()
        atomic_write_json(folder / "header.json", full)  # last: marks the cache as created
        return cache

    @classmethod
    def open(
        cls, folder: str | Path, expected: dict[str, Any] | None = None, *, writable: bool = False
    ) -> FeatureCache:
        """Open an existing cache; refuse one made with another backbone than ``expected``."""
        folder = Path(folder)
        for name in _FILES:
            if not (folder / name).is_file():
                raise CaptionerError(f"{folder}: not a complete feature cache ({name} missing)")
        header = _read_json(folder / "header.json")
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise CaptionerError(
                f"{folder}: header.json is not a {FORMAT} v{VERSION} header "
                f"(format={header.get('format')!r}, version={header.get('version')!r})"
            )
        if expected is not None:
            _check_expected(folder, header, expected)
        shape = tuple(header.get("shape", ()))
        try:
            array = np.load(folder / "features.npy", mmap_mode="r+" if writable else "r")
            status = np.load(folder / "status.npy")
        except (OSError, ValueError) as exc:
            raise CaptionerError(f"{folder}: corrupt feature cache ({exc})") from None
        if array.shape != shape or array.dtype != np.float16:
            raise CaptionerError(
                f"{folder}: features.npy is {array.dtype} {array.shape} but header.json says "
                f"float16 {shape} (half-written or corrupt cache; extract it again)"
            )
        if status.shape != shape[:1] or status.dtype != np.uint8 or len(header["keys"]) != shape[0]:
            raise CaptionerError(f"{folder}: status.npy or keys do not match header.json")
        failures = _read_json(folder / "failures.json")
        return cls(folder, header, array, status.copy(), failures)

    @property
    def keys(self) -> list[str]:
        return self._keys

    @property
    def status(self) -> np.ndarray:
        """Read-only view of the per-item status (0 not done, 1 ok, 2 failed)."""
        view = self._status.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._keys)

    def index_of(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise CaptionerError(f"{self.folder}: no features for image {key!r}") from None

    def is_complete(self) -> bool:
        """True when every item was processed (ok or failed)."""
        return bool((self._status != PENDING).all())

    def valid_indices(self) -> np.ndarray:
        return np.flatnonzero(self._status == OK)

    def features(self, i: int) -> np.ndarray:
        """Row ``i`` as float16 ``[R, C]``; refuses rows that were not extracted."""
        if self._status[i] != OK:
            state = "failed" if self._status[i] == FAILED else "not extracted yet"
            raise CaptionerError(f"{self.folder}: features of {self._keys[i]!r} are {state}")
        return np.asarray(self.array[i])

    def write(self, indices: Sequence[int] | np.ndarray, feats: np.ndarray) -> None:
        """Store rows (marked done in memory; on disk at the next flush)."""
        idx = np.asarray(indices, dtype=np.int64)
        expected = (len(idx), *self.array.shape[1:])
        if feats.shape != expected:
            raise ValueError(f"features of shape {feats.shape}, expected {expected}")
        if not self.array.flags.writeable:
            raise CaptionerError(f"{self.folder}: cache opened read-only (use writable=True)")
        self.array[idx] = feats.astype(np.float16, copy=False)
        self._status[idx] = OK
        for i in idx:
            self._failures.pop(self._keys[i], None)
        self._dirty = True

    def mark_failed(self, key: str, problem: str) -> None:
        self._status[self.index_of(key)] = FAILED
        self._failures[key] = problem
        self._dirty = True

    def reset_failed(self) -> None:
        """Mark failed items as not done so the next extraction retries them."""
        self._status[self._status == FAILED] = PENDING
        self._failures.clear()
        self._dirty = True

    def failures(self) -> dict[str, str]:
        return dict(self._failures)

    def flush(self) -> None:
        """Sync features to disk, then atomically replace the progress files."""
        if not self._dirty:
            return
        self.array.flush()
        fd = os.open(self.folder / "features.npy", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_progress()
        self._dirty = False

    def _write_progress(self) -> None:
        """failures.json, then status.npy (what a resumed extraction trusts)."""
        atomic_write_json(self.folder / "failures.json", self._failures)
        self._write_status(self.folder / "status.npy")

    def _write_status(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.save(buffer, self._status)
        atomic_write_bytes(path, buffer.getvalue())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionerError(f"{path}: corrupt feature cache file ({exc})") from None
    if not isinstance(value, dict):
        raise CaptionerError(f"{path}: corrupt feature cache file (not a JSON object)")
    return value


def _check_expected(folder: Path, header: dict[str, Any], expected: dict[str, Any]) -> None:
    for field, want in expected.items():
        if field in _NOT_COMPARED:
            continue
        have = header.get(field)
        if json.loads(json.dumps(want)) != have:
            raise CacheMismatchError(
                f"{folder}: feature cache was made with {field}={have!r}, but {want!r} is "
                "requested; use another output folder or delete this one"
            )
