"""The pipeline under torchrun: 2 gloo CPU processes, each its share of the batches, merged
into the one catalogue a single process writes; shards left by a killed run are folded in."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import build_models, pipeline_args, write_mixed_folder

from captioner.cli import main
from captioner.pipeline.catalogue import TIMING_COLUMNS, Catalogue, shard_path
from captioner.runtime import distributed
from captioner.vision.backbones import offline_mobilenet_weights

TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
pytestmark = [
    pytest.mark.skipif(offline_mobilenet_weights() is None, reason="no offline MobileNetV2"),
    pytest.mark.skipif(
        not distributed.dist.is_available() or not distributed.dist.is_gloo_available(),
        reason="torch.distributed with gloo is not available",
    ),
]


def same_rows(a: object, b: object) -> bool:
    """Equal, except floats, which need only agree to 1e-4 (relative) or 1e-9 (absolute)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_rows(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_rows(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def content(out: Path) -> list[dict]:
    with Catalogue.open(out, readonly=True) as catalogue:
        rows = list(catalogue.rows())
    for row in rows:
        for key in TIMING_COLUMNS:
            row.pop(key)
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("pipeline-ddp")
    return build_models(root / "models"), write_mixed_folder(root / "archive", photos=5, pages=4)


def test_two_gloo_processes_merge_into_one_catalogue(
    setup: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    models, archive = setup
    flags = pipeline_args(models, "--batch-size", "2", "--device", "cpu", "--export", "jsonl")
    single = tmp_path / "single" / "out"
    assert main(["pipeline", str(archive), "--out", str(single), *flags]) == 0
    sharded = tmp_path / "sharded" / "out"
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [*TORCHRUN, "-m", "captioner.cli", "pipeline", str(archive), "--out", str(sharded), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("catalogue:") == 1  # rank 0 reports for both
    assert "9 files" in done.stdout and "Photo 5, Text 4" in done.stdout
    # 5 batches: 3 on rank 0, 2 on rank 1; the ranks run 1 thread each, this process 2, so
    # floats may differ in their last digits (1.62894e-33 against 1.62899e-33 seen), not more.
    assert same_rows(content(sharded), content(single))
    assert not list(sharded.glob("catalogue.rank*"))  # shards folded in and removed
    assert (sharded / "catalogue.jsonl").read_text().count("\n") == 9
    assert (sharded / "index.html").is_file()
    # a re-run (a single process now) finds everything done and changes nothing
    before = content(sharded)
    assert main(["pipeline", str(archive), "--out", str(sharded), *flags]) == 0
    assert content(sharded) == before


def test_shards_left_by_a_killed_sharded_run_are_folded_in_first(
    setup: tuple[dict[str, Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models, archive = setup
    flags = pipeline_args(models, "--batch-size", "2")
    reference = tmp_path / "reference"
    assert main(["pipeline", str(archive), "--out", str(reference), *flags]) == 0
    rows = content(reference)
    with Catalogue.open(reference, readonly=True) as catalogue:
        signature = catalogue.signature
        full = list(catalogue.rows())
    # what a killed 2-rank run leaves: an empty catalogue and each rank's finished rows
    out = tmp_path / "killed"
    Catalogue.open(out, signature).close()
    for rank in (0, 1):
        with Catalogue.open(shard_path(out, rank, 2), signature) as shard:
            shard.write([r for i, r in enumerate(full) if i % 2 == rank and i < 6])
    capsys.readouterr()
    assert main(["pipeline", str(archive), "--out", str(out), *flags]) == 0
    assert "3 done, 6 kept" in capsys.readouterr().out
    assert not list(out.glob("catalogue.rank*"))
    assert content(out) == rows
