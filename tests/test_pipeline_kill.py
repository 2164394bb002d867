"""SIGKILL ``captioner pipeline`` at random points, run it again, compare with one clean run.

The kill points follow tests/test_reliability_kill.py: the first lands in the start-up (a
random share of its CPU time in the reference run), the next ones after a random number of the
images left, counted by the child's own progress bar. Re-runs then go to the end; the
catalogue must hold the same rows as the uninterrupted run (timings aside), none twice, and
the thumbnails, denoised copies and review page must be the same bytes, with no temporary
file left behind.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from doctype_tiny import photo
from pipeline_support import build_models, pipeline_args, write_mixed_folder
from test_reliability_kill import KILLS, command, kill_and_resume, kill_rules, startup_cpu_seconds

from captioner.pipeline.catalogue import TIMING_COLUMNS, Catalogue
from captioner.vision.backbones import offline_mobilenet_weights

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
    pytest.mark.skipif(offline_mobilenet_weights() is None, reason="no offline MobileNetV2"),
]


def images_done(events: list[dict]) -> int:
    found = [e["done"] for e in events if e["bar"] == "pipeline"]
    return found[-1] if found else 0


def content(out: Path) -> list[dict]:
    with Catalogue.open(out, readonly=True) as catalogue:
        rows = list(catalogue.rows())
        assert catalogue.count() == len({r["path"] for r in rows})
    for row in rows:
        for key in TIMING_COLUMNS:
            row.pop(key)
    return rows


def outputs(out: Path) -> dict[str, bytes]:
    """Every file the run wrote but the database itself (its bytes depend on page layout)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "catalogue.sqlite"
    }


def test_killed_pipeline_runs_end_with_the_uninterrupted_catalogue(tmp_path: Path) -> None:
    models = build_models(tmp_path / "models")
    archive = write_mixed_folder(tmp_path / "archive", photos=6, pages=5)
    photo(77).save(archive / "more" / "noisy.jpg", quality=40)
    (archive / "same.jpg").write_bytes((archive / "photo-02.jpg").read_bytes())
    files = sum(1 for p in archive.rglob("*") if p.is_file())

    def args(out: Path) -> list[str]:
        flags = pipeline_args(models, "--batch-size", "2", "--save-denoised")
        return command("pipeline", archive, "--out", out, *flags)

    reference = tmp_path / "reference" / "out"  # same folder name: same page title
    startup = startup_cpu_seconds(
        args(reference), lambda events: any(e["bar"] == "pipeline" for e in events)
    )
    out = tmp_path / "killed" / "out"
    database = out / "catalogue.sqlite"

    def images_left() -> int:
        if not database.is_file():
            return files
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
            return files - int(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    counts = kill_and_resume(
        args(out), args(out), database.is_file, kill_rules(5, startup, images_left, images_done)
    )
    assert counts["killed"] == KILLS and counts["resumed"] >= 2, counts
    assert images_left() == 0
    assert content(out) == content(reference)
    assert outputs(out) == outputs(reference)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries
