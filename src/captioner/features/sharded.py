"""Feature extraction shared by torchrun ranks: rank r extracts the rows i with i % world == r.

All ranks write their (disjoint) rows into the one ``features.npy`` memmap, but each keeps its
status and failures in its own files (``status.rank{r}of{w}.npy``, ``failures.rank{r}of{w}.json``)
so no rank ever overwrites another's progress. When the ranks are done, rank 0 folds the shard
files into ``status.npy`` / ``failures.json`` and deletes them. A killed sharded run leaves its
shard files behind; the next extraction of that cache (sharded or not) merges them first, so no
finished row is extracted twice.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.errors import CaptionerError
from captioner.features.cache import FAILED, PENDING, FeatureCache
from captioner.fileio import atomic_write_bytes, atomic_write_json
from captioner.runtime import distributed
from captioner.runtime.distributed import DistContext

_SHARD = re.compile(r"status\.rank(\d+)of(\d+)\.npy")


def _status_path(folder: Path, rank: int, world: int) -> Path:
    return folder / f"status.rank{rank}of{world}.npy"


def _failures_path(folder: Path, rank: int, world: int) -> Path:
    return folder / f"failures.rank{rank}of{world}.json"


def owned_rows(length: int, rank: int, world: int) -> np.ndarray:
    return np.arange(rank, length, world)


class RankCache(FeatureCache):
    """One rank's handle on a shared cache; ``flush`` writes only this rank's shard files."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def open_rank(
        cls, folder: Path, expected: dict[str, Any], rank: int, world_size: int
    ) -> RankCache:
        cache = cls.open(folder, expected=expected, writable=True)
        assert isinstance(cache, RankCache)
        cache.rank, cache.world_size = rank, world_size
        return cache

    def pending_rows(self) -> np.ndarray:
        """This rank's rows that are not done yet."""
        rows = owned_rows(len(self), self.rank, self.world_size)
        return rows[self.status[rows] == PENDING]

    def _write_progress(self) -> None:
        """This rank's own failures and status files (rank 0 merges them at the end)."""
        mine = {self.keys[i] for i in owned_rows(len(self), self.rank, self.world_size)}
        failures = {k: v for k, v in self._failures.items() if k in mine}
        atomic_write_json(_failures_path(self.folder, self.rank, self.world_size), failures)
        self._write_status(_status_path(self.folder, self.rank, self.world_size))


def merge_rank_shards(folder: Path) -> int:
    """Fold per-rank status/failure files into the cache's own; return how many were merged.

    Only call it while no rank is writing to ``folder``. Row i is taken from the shard of rank
    ``i % world`` (the rank that owned it). Idempotent: a crash midway leaves the shard files,
    and merging again gives the same result.
    """
    shards = sorted(
        (int(m.group(1)), int(m.group(2)), path)
        for path in folder.glob("status.rank*of*.npy")
        if (m := _SHARD.fullmatch(path.name))
    )
    if not shards:
        return 0
    try:
        status = np.load(folder / "status.npy")
        failures = json.loads((folder / "failures.json").read_text(encoding="utf-8"))
        keys = json.loads((folder / "header.json").read_text(encoding="utf-8"))["keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaptionerError(f"{folder}: corrupt feature cache ({exc})") from None
    for rank, world, path in shards:
        try:
            shard = np.load(path)
            shard_failures_path = _failures_path(folder, rank, world)
            shard_failures = (
                json.loads(shard_failures_path.read_text(encoding="utf-8"))
                if shard_failures_path.is_file()
                else {}
            )
        except (OSError, ValueError) as exc:
            raise CaptionerError(f"{path}: unreadable extraction shard ({exc})") from None
        if shard.shape != status.shape or rank >= world:
            raise CaptionerError(f"{path}: extraction shard does not fit this cache")
        rows = owned_rows(len(status), rank, world)
        status[rows] = shard[rows]
        for i in rows.tolist():
            failures.pop(keys[i], None)
            if keys[i] in shard_failures and status[i] == FAILED:
                failures[keys[i]] = shard_failures[keys[i]]
    atomic_write_json(folder / "failures.json", failures)
    buffer = io.BytesIO()
    np.save(buffer, status)
    atomic_write_bytes(folder / "status.npy", buffer.getvalue())
    for rank, world, path in shards:
        path.unlink(missing_ok=True)
        _failures_path(folder, rank, world).unlink(missing_ok=True)
    return len(shards)


def open_shared(
    folder: Path,
    header: dict[str, Any],
    keys: list[str],
    ctx: DistContext,
    open_or_create: Callable[[Path, dict[str, Any], list[str]], FeatureCache],
) -> RankCache:
    """Rank 0 creates (or checks and merges) the cache, then every rank opens its handle.

    A refusal on rank 0 (another image list, another backbone) is raised on every rank, so no
    rank is left waiting for the others.
    """
    error: str | None = None
    if ctx.is_main:
        try:
            open_or_create(folder, header, keys)
        except CaptionerError as exc:
            distributed.broadcast_object(ctx, str(exc))
            raise
    error = distributed.broadcast_object(ctx, error)
    if error is not None:
        raise CaptionerError(error)
    return RankCache.open_rank(folder, header, ctx.rank, ctx.world_size)


def finish_shared(
    cache: RankCache, done_now: int, ctx: DistContext, device: str
) -> tuple[FeatureCache, int]:
    """Wait for every rank, merge their shard files (rank 0), and return the merged cache and
    the number of images extracted by all ranks together."""
    cache.flush()
    distributed.barrier(ctx)
    if ctx.is_main:
        merge_rank_shards(cache.folder)
    distributed.barrier(ctx)
    total = distributed.all_reduce_sums(ctx, [done_now], torch.device(device))[0]
    return FeatureCache.open(cache.folder), int(total)
