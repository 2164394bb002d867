"""SIGKILL ``captioner extract`` and ``captioner train`` at random points, resume, compare.

Each test runs the real command in a subprocess, kills it with SIGKILL after a delay drawn
from a seeded RNG (a few times), resumes until a run exits 0, then compares the result with
an uninterrupted run: the feature cache byte for byte, the trained weights exactly. Kills
land anywhere: while importing, between batches, inside an epoch, during a checkpoint write.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
from fault_corpus import encode, photo

from captioner.data.manifest import ImageRecord, Manifest
from captioner.features.cache import FeatureCache

KILLS = 3  # SIGKILLs per test (each at a random point), then runs until one finishes
RUN_LIMIT_S = 120  # one subprocess run; the whole test is bounded by KILLS + 2 runs
CACHE_FILES = ("header.json", "features.npy", "status.npy", "failures.json")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "captioner.cli", *map(str, args)]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:  # already gone
        return math.inf
    return times.user + times.system


def run_to_completion(args: list[str], progress_file: Path) -> tuple[float, float]:
    """Run once without interruption; return the CPU seconds it had used when its work began
    and when it ended (CPU time, unlike wall time, hardly depends on the machine's load).

    The work is the span over which ``progress_file`` is rewritten (once per flush or epoch):
    it starts one step before the first write and ends with the last.
    """
    proc = subprocess.Popen(args, env=environment(), stderr=subprocess.PIPE, text=True)
    watch = psutil.Process(proc.pid)
    writes: list[float] = []
    stamp = None
    deadline = time.monotonic() + RUN_LIMIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        used = cpu_seconds(watch)
        with contextlib.suppress(FileNotFoundError):
            if progress_file.stat().st_mtime_ns != stamp:
                stamp = progress_file.stat().st_mtime_ns
                writes.append(used)
        time.sleep(0.005)
    _, err = proc.communicate(timeout=RUN_LIMIT_S)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert len(writes) >= 3 and writes[-1] < math.inf, writes
    step = (writes[-1] - writes[0]) / (len(writes) - 1)
    return writes[0] - step, writes[-1]


def kill_and_resume(
    first_args: list[str],
    resume_args: list[str],
    can_resume: Callable[[], bool],
    remaining: Callable[[], float],
    timing: tuple[float, float],
    seed: int,
) -> dict[str, int]:
    """Start, SIGKILL at a random point, restart (resuming when possible) until one run ends.

    ``remaining()`` is the share of the work not yet on disk (0..1). Each kill comes when the
    run has used the reference run's start-up CPU time plus a random share of the CPU time
    of the work left, so kills land in the work rather than after it, whatever the load of
    the machine. After ``KILLS`` kills a last run goes to completion.
    """
    rng = random.Random(seed)
    startup, work_done = timing
    counts = {"killed": 0, "resumed": 0, "runs": 0}
    deadline = time.monotonic() + (KILLS + 2) * RUN_LIMIT_S
    while True:
        left, resume = remaining(), can_resume()
        target = math.inf
        if counts["killed"] < KILLS and left > 0:
            target = startup + rng.uniform(0.0, 0.9) * (work_done - startup) * left
        counts["resumed"] += resume
        counts["runs"] += 1
        proc = subprocess.Popen(
            resume_args if resume else first_args, env=environment(), stderr=subprocess.PIPE
        )
        watch = psutil.Process(proc.pid)
        try:
            while proc.poll() is None and cpu_seconds(watch) < target:
                assert time.monotonic() < deadline, "the kill test ran out of time"
                time.sleep(0.005)
            if proc.poll() is None and target < math.inf:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
                counts["killed"] += 1
                continue
            _, err = proc.communicate(timeout=RUN_LIMIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        return counts


# ---------------------------------------------------------------------------- extract


IMAGES = 60  # batch size 1, flushed every 20: status.npy is written 3 times in train


def write_image_dataset(root: Path) -> Path:
    """60 small photos (2 broken) in train and val: a manifest for ``extract``."""
    images = root / "images"
    images.mkdir(parents=True)
    records = []
    for i in range(IMAGES):
        name = f"img{i:02d}.jpg"
        data = encode(photo(64 + i % 30, 48, seed=i), "JPEG", quality=90)
        if i in (7, 47):
            data = data[: len(data) // 3]  # broken: must be listed as failed after resume too
        (images / name).write_bytes(data)
        records.append(ImageRecord(name, "train" if i < 40 else "val", [f"picture {i}"]))
    manifest = root / "manifest.json"
    Manifest(images, records, {"format": "test"}, {}).save(manifest)
    return manifest


def extract_args(manifest: Path, out: Path) -> list[str]:
    # batch size 1: the cache is flushed every 20 images, so kills land before, between and
    # after flushes
    return command(
        "extract", "--manifest", manifest, "--out", out, "--weights", "none",
        "--batch-size", "1", "--workers", "0", "--device", "cpu", "--no-progress",
    )  # fmt: skip


def test_killed_extraction_resumes_to_an_identical_cache(tmp_path: Path) -> None:
    manifest = write_image_dataset(tmp_path)
    reference = tmp_path / "reference"
    timing = run_to_completion(
        extract_args(manifest, reference), reference / "train" / "status.npy"
    )
    out = tmp_path / "killed"
    args = extract_args(manifest, out)

    def remaining() -> float:
        done = [
            np.load(out / s / "status.npy")
            for s in ("train", "val")
            if (out / s / "status.npy").exists()
        ]
        return 1.0 - sum(int((d != 0).sum()) for d in done) / IMAGES

    counts = kill_and_resume(
        args, args, lambda: (out / "train" / "header.json").exists(), remaining, timing, 1234
    )
    # a kill after the last flush leaves nothing to resume: at least two land in the work
    assert counts["killed"] >= 2 and counts["resumed"] >= 2, counts
    for split in ("train", "val"):
        for name in CACHE_FILES:
            assert (out / split / name).read_bytes() == (reference / split / name).read_bytes(), (
                split,
                name,
                counts,
            )
    cache = FeatureCache.open(out / "train")
    assert cache.is_complete() and sorted(cache.failures()) == ["img07.jpg"]


# ---------------------------------------------------------------------------- train


EPOCHS = 5
WORDS = ["red", "green", "blue", "circle", "square", "triangle", "small", "large"]


def write_feature_dataset(root: Path, train: int = 96, val: int = 24) -> tuple[Path, Path]:
    """Synthetic features whose captions depend on them: a few hundred steps per run."""
    rng = np.random.default_rng(0)
    header = {
        "backbone": "synthetic",
        "weights_id": "test",
        "preprocessing": {"image_size": 8},
        "grid": [2, 2],
        "channels": 8,
    }
    records = []
    for split, count in (("train", train), ("val", val)):
        feats = rng.normal(size=(count, 4, 8)).astype(np.float16)
        names = [f"{split}{i:03d}.png" for i in range(count)]
        for i, name in enumerate(names):
            a, b = np.argsort(feats[i].mean(0))[-2:]
            records.append(
                ImageRecord(name, split, [f"a {WORDS[a]} {WORDS[b]}", f"the {WORDS[a]}"])
            )
        cache = FeatureCache.create(root / "features" / split, header, names)
        cache.write(np.arange(count), feats)
        cache.flush()
    manifest = root / "manifest.json"
    Manifest(root / "images", records, {"format": "test"}, {}).save(manifest)
    return manifest, root / "features"


def train_args(manifest: Path, features: Path, out: Path, resume: bool = False) -> list[str]:
    return command(
        "train", "--manifest", manifest, "--features", features, "--out", out,
        "--epochs", EPOCHS, "--batch-size", "8", "--lr", "0.003", "--patience", "3",
        "--seed", "7", "--device", "cpu", "--no-progress", *(["--resume"] if resume else []),
        "--set", "hidden_dim=48", "attention_dim=32", "encoder_dim=32", "embed_dim=16",
        "dropout=0.3", "lr_schedule=plateau",
    )  # fmt: skip


def test_killed_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    manifest, features = write_feature_dataset(tmp_path)
    reference = tmp_path / "reference"
    timing = run_to_completion(
        train_args(manifest, features, reference), reference / "checkpoint" / "state.json"
    )
    out = tmp_path / "killed"
    state = out / "checkpoint" / "state.json"

    def remaining() -> float:
        if not state.exists():
            return 1.0
        return 1.0 - json.loads(state.read_text())["progress"]["epoch"] / EPOCHS

    counts = kill_and_resume(
        train_args(manifest, features, out),
        train_args(manifest, features, out, resume=True),
        state.exists,
        remaining,
        timing,
        4321,
    )
    assert counts["killed"] == KILLS and counts["resumed"] >= 1, counts
    for name in ("model/model.safetensors", "model/config.json", "checkpoint/state.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), (name, counts)
    history = json.loads((out / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert [(h["epoch"], h["train_loss"], h["val_loss"], h["lr"]) for h in history] == [
        (h["epoch"], h["train_loss"], h["val_loss"], h["lr"]) for h in expected
    ]
