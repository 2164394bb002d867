"""A whole run into a catalogue folder: walk, open (or refuse) the catalogue, process this
rank's share, merge the shards, write the review page and the exports.

Under ``torchrun`` rank 0 walks the inputs and opens the catalogue (folding in the shards a
killed run left), every rank processes the batches ``b`` with ``b % world == rank`` into its
own shard, and rank 0 folds the shards into the one catalogue at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.pipeline.catalogue import FILE, Catalogue, set_aside, shard_path
from captioner.pipeline.chain import FileResult, Pipeline, not_walked_result, plan_batches
from captioner.pipeline.walk import Walk, WalkedFile, display_path, walk_inputs
from captioner.runtime import distributed
from captioner.runtime.distributed import DistContext


@dataclass
class RunSummary:
    """What a run did (on rank 0: for all ranks together)."""

    folder: Path
    files: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    captioned: int = 0
    denoised: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    not_walked: list[tuple[str, str, bool]] = field(default_factory=list)  # (path, why, failure)
    seconds: float = 0.0
    set_aside: Path | None = None
    page: Path | None = None
    exports: list[Path] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.statuses["done"] + self.statuses["failed"] + self.statuses["copied"]

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not any(failure for _, _, failure in self.not_walked)


def run_archive(
    pipeline: Pipeline,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    new_catalogue: bool = False,
    page: bool = True,
    exports: Sequence[str] = (),
    progress: bool = True,
    on_result: Callable[[FileResult], None] | None = None,
) -> RunSummary:
    """Run ``pipeline`` over ``inputs`` into the catalogue folder ``out``."""
    out = Path(out)
    ctx = distributed.current()
    started = time.perf_counter()
    summary = RunSummary(out)
    walk: Walk | None = None
    error: str | None = None
    if ctx.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            walk = walk_inputs(list(inputs), exclude=[out])
            if new_catalogue:
                summary.set_aside = set_aside(out)
            with Catalogue.open(out / FILE, pipeline.signature()) as catalogue:
                catalogue.merge_shards()
        except (CaptionerError, OSError) as exc:
            error = str(exc) if isinstance(exc, CaptionerError) else f"{out}: {exc}"
    error, walk = distributed.broadcast_object(ctx, (error, walk))
    if error is not None:
        raise CaptionerError(error)
    assert walk is not None
    for entry in walk.not_walked:
        summary.not_walked.append((display_path(entry.path), entry.reason, entry.failure))
    summary.files = len(walk.files)
    batches = plan_batches(len(walk.files), pipeline.settings.batch_size)
    mine = batches[ctx.rank :: ctx.world_size]
    main = Catalogue.open(out / FILE, readonly=ctx.enabled, create=False)
    store = (
        Catalogue.open(shard_path(out, ctx.rank, ctx.world_size), pipeline.signature())
        if ctx.enabled
        else main
    )
    lookups = [main, store] if store is not main else [main]
    try:
        for result in pipeline.process(
            walk.files, out, store, lookups, mine, progress=progress and ctx.is_main
        ):
            _count(summary, result)
            if on_result is not None:
                on_result(result)
    finally:
        if store is not main:
            store.close()
        main.close()
    distributed.barrier(ctx)
    if ctx.is_main:
        with Catalogue.open(out / FILE, pipeline.signature()) as catalogue:
            catalogue.merge_shards()
            catalogue.set_not_walked((p, why) for p, why, _ in summary.not_walked)
            if ctx.enabled:  # the other ranks' results: count them from the merged catalogue
                _recount(summary, catalogue, walk.files)
            if page:
                from captioner.pipeline.page import write_review_page

                summary.page = write_review_page(catalogue, out)
            for kind in exports:
                target = out / f"catalogue.{kind}"
                if kind == "csv":
                    catalogue.export_csv(target)
                elif kind == "jsonl":
                    catalogue.export_jsonl(target)
                else:
                    raise CaptionerError(f"unknown export format {kind!r} (csv or jsonl)")
                summary.exports.append(target)
    distributed.barrier(ctx)
    summary.seconds = time.perf_counter() - started
    if on_result is not None:
        for entry in walk.not_walked:
            on_result(not_walked_result(entry))
    return summary


def _count(summary: RunSummary, result: FileResult) -> None:
    summary.statuses[result.status] += 1
    if result.error is not None:
        summary.failed.append((result.path, result.error))
    if result.kind is not None:
        summary.kinds[result.kind] += 1
    summary.captioned += int(result.captioned)
    summary.denoised += int(result.denoised)


def _recount(summary: RunSummary, catalogue: Catalogue, files: list[WalkedFile]) -> None:
    """Kinds, captions and failures of every walked file, read from the merged catalogue
    (statuses stay rank 0's own)."""
    names = {display_path(f.path) for f in files}
    summary.kinds.clear()
    summary.failed.clear()
    summary.captioned = summary.denoised = 0
    for row in catalogue.rows():
        if row["path"] not in names:
            continue
        if row["error"] is not None:
            summary.failed.append((row["path"], row["error"]))
        if row["kind"] is not None:
            summary.kinds[row["kind"]] += 1
        summary.captioned += int(row["captioned"])
        summary.denoised += int(row["denoised"])


def describe(summary: RunSummary, ctx: DistContext | None = None) -> str:
    """The run's summary, a few lines for the console."""
    s = summary
    statuses = ", ".join(f"{n} {k}" for k, n in sorted(s.statuses.items()))
    lines = [
        f"{s.files} files: {statuses or 'nothing to do'}"
        + (f" ({s.images_per_second:.1f} files/s processed)" if s.processed else ""),
        "kinds: " + (", ".join(f"{k} {n}" for k, n in sorted(s.kinds.items())) or "none"),
        f"captioned {s.captioned}, denoised {s.denoised}, failed {len(s.failed)}, "
        f"not walked {len(s.not_walked)}",
    ]
    if ctx is not None and ctx.enabled:
        lines[0] += f" [statuses of rank 0 of {ctx.world_size}]"
    return "\n".join(lines)
