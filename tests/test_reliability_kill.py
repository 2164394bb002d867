"""SIGKILL ``captioner extract`` and ``captioner train`` at random points, resume, compare.

Each test runs the real command in a subprocess, kills it with SIGKILL at points drawn from a
seeded RNG (three times), resumes until a run exits 0, then compares the result with an
uninterrupted run: the feature cache byte for byte, the trained weights exactly.

The first kill lands in the start-up (importing torch, loading data, building the model), at
a random share of its CPU time in the reference run. The next two land after a random number
of the steps left (images, training batches) as the child's own progress bar counts them:
in a batch, between flushes, in validation or a checkpoint write. Progress, unlike CPU time
(which varied by a second or more between runs in CI, and by 2x on a loaded machine), puts
kills in the work on any machine.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
from fault_corpus import encode, photo

from captioner.data.manifest import ImageRecord, Manifest
from captioner.features.cache import FeatureCache
from captioner.runlog import PROGRESS_FILE_ENV

KILLS = 3  # SIGKILLs per test (each at a random point), then runs until one finishes
RUN_LIMIT_S = 120  # one subprocess run; the whole test is bounded by KILLS + 2 runs
CACHE_FILES = ("header.json", "features.npy", "status.npy", "failures.json")

# (child's CPU seconds, its progress events so far) -> kill it now
KillRule = Callable[[float, list[dict]], bool]

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


class Child:
    """A ``captioner`` subprocess whose stderr is collected as it comes, and whose progress
    bars report each step to its own events file (``CAPTIONER_PROGRESS_FILE``)."""

    def __init__(self, args: list[str]) -> None:
        handle, name = tempfile.mkstemp(prefix="progress-", suffix=".jsonl")
        os.close(handle)
        self.events_file = Path(name)
        env = dict(environment(), **{PROGRESS_FILE_ENV: name})
        self.proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
        self.watch = psutil.Process(self.proc.pid)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):
            self._chunks.append(chunk)

    def stderr(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def events(self) -> list[dict]:
        """The progress events so far (a line still being written is left for later)."""
        lines = self.events_file.read_text(encoding="utf-8").split("\n")[:-1]
        return [json.loads(line) for line in lines]

    def cpu(self) -> float:
        return cpu_seconds(self.watch)

    def finish(self, kill: bool = False) -> str:
        if kill and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=RUN_LIMIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=30)
        self.events_file.unlink(missing_ok=True)
        return self.stderr()


def startup_cpu_seconds(args: list[str], started: Callable[[list[dict]], bool]) -> float:
    """Run once without interruption; return the CPU seconds it had used when ``started``
    (of its progress events) first held: the start-up's cost."""
    child = Child(args)
    began = None
    deadline = time.monotonic() + RUN_LIMIT_S
    while child.proc.poll() is None and time.monotonic() < deadline:
        used = child.cpu()
        if began is None and started(child.events()):
            began = used
        time.sleep(0.005)
    err = child.finish()
    assert child.proc.returncode == 0, err
    assert "Traceback" not in err
    assert began is not None and began < math.inf, "the reference run never showed its work"
    return began


def kill_and_resume(
    first_args: list[str],
    resume_args: list[str],
    can_resume: Callable[[], bool],
    kill_rule: Callable[[int], KillRule | None],
) -> dict[str, int]:
    """Start, SIGKILL when ``kill_rule(kills so far)`` says, restart (resuming when possible)
    until one run ends. After ``KILLS`` kills, or when the rule is None (nothing left to
    interrupt), a last run goes to completion.
    """
    counts = {"killed": 0, "resumed": 0, "runs": 0}
    deadline = time.monotonic() + (KILLS + 2) * RUN_LIMIT_S
    while True:
        resume = can_resume()
        rule = kill_rule(counts["killed"]) if counts["killed"] < KILLS else None
        counts["resumed"] += resume
        counts["runs"] += 1
        child = Child(resume_args if resume else first_args)
        try:
            while child.proc.poll() is None:
                assert time.monotonic() < deadline, "the kill test ran out of time"
                if rule is not None and rule(child.cpu(), child.events()):
                    break
                time.sleep(0.005)
        finally:
            alive = child.proc.poll() is None
            err = child.finish(kill=alive)
        if alive:
            counts["killed"] += 1
            continue
        assert child.proc.returncode == 0, err
        assert "Traceback" not in err
        return counts


def kill_rules(
    seed: int,
    startup: float,
    steps_left: Callable[[], int],
    steps_done: Callable[[list[dict]], int],
) -> Callable[[int], KillRule | None]:
    """The kill rule of each run: the first kill after a random share of ``startup`` CPU
    seconds, the next ones after a random number of the ``steps_left()`` steps (1..all),
    counted by ``steps_done(events)`` in the run. None when nothing is left to interrupt."""
    rng = random.Random(seed)

    def rule_for(kills: int) -> KillRule | None:
        share = rng.random()
        if kills == 0:
            return lambda cpu, _err: cpu >= share * startup
        left = steps_left()
        if left <= 0:
            return None
        target = 1 + int(share * (left - 1))
        return lambda _cpu, events: steps_done(events) >= target

    return rule_for


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
        "--batch-size", "1", "--workers", "0", "--device", "cpu",
    )  # fmt: skip


def images_done(events: list[dict]) -> int:
    """Images this run has done so far: the last count of each split's progress bar."""
    last = {e["bar"]: e["done"] for e in events if e["bar"].startswith("features ")}
    return sum(last.values())


def test_killed_extraction_resumes_to_an_identical_cache(tmp_path: Path) -> None:
    manifest = write_image_dataset(tmp_path)
    reference = tmp_path / "reference"
    startup = startup_cpu_seconds(
        extract_args(manifest, reference),
        lambda events: any(e["bar"] == "features train" for e in events),
    )
    out = tmp_path / "killed"
    args = extract_args(manifest, out)

    def images_left() -> int:
        done = [
            np.load(out / s / "status.npy")
            for s in ("train", "val")
            if (out / s / "status.npy").exists()
        ]
        return IMAGES - sum(int((d != 0).sum()) for d in done)

    # seed 10: kills at 57 % of the start-up, after 26 images (in train, after its flush at
    # 20), then 23 images into the resumed run (train's last 20, 3 of val)
    rules = kill_rules(10, startup, images_left, images_done)
    counts = kill_and_resume(args, args, lambda: (out / "train" / "header.json").exists(), rules)
    # the runs after the two kills in the work resume
    assert counts["killed"] == KILLS and counts["resumed"] >= 2, counts
    assert images_left() == 0
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
BATCHES = 96 * 2 // 8  # per epoch: 96 training images, 2 captions each, batch size 8
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
        "--seed", "7", "--device", "cpu", *(["--resume"] if resume else []),
        "--set", "model.hidden_dim=48", "model.attention_dim=32", "model.encoder_dim=32",
        "model.embed_dim=16", "model.dropout=0.3", "lr_schedule=plateau",
    )  # fmt: skip


def batches_done(events: list[dict]) -> int:
    """Training batches this run has done so far, from its per-epoch progress bars."""
    bars = [
        (int(e["bar"].split()[1]), e["done"], e["total"])
        for e in events
        if e["bar"].startswith("epoch ")
    ]
    if not bars:
        return 0
    first_epoch, (epoch, done, total) = bars[0][0], bars[-1]
    assert total == BATCHES, bars[-1]
    return (epoch - first_epoch) * total + done


def test_killed_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    manifest, features = write_feature_dataset(tmp_path)
    reference = tmp_path / "reference"
    startup = startup_cpu_seconds(
        train_args(manifest, features, reference),
        lambda events: any(e["bar"] == "epoch 1" for e in events),
    )
    out = tmp_path / "killed"
    state = out / "checkpoint" / "state.json"

    def batches_left() -> int:
        epochs = json.loads(state.read_text())["progress"]["epoch"] if state.exists() else 0
        return (EPOCHS - epochs) * BATCHES

    # seed 3: kills at 24 % of the start-up, at batch 17 of epoch 3, then 27 batches into the
    # resumed run (epoch 3's 24 again, then 3 of epoch 4)
    counts = kill_and_resume(
        train_args(manifest, features, out),
        train_args(manifest, features, out, resume=True),
        state.exists,
        kill_rules(3, startup, batches_left, batches_done),
    )
    assert counts["killed"] == KILLS and counts["resumed"] >= 1, counts
    for name in ("model/model.safetensors", "model/config.json", "checkpoint/state.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), (name, counts)
    history = json.loads((out / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert [(h["epoch"], h["train_loss"], h["val_loss"], h["lr"]) for h in history] == [
        (h["epoch"], h["train_loss"], h["val_loss"], h["lr"]) for h in expected
    ]
