"""The epoch loop every model task trains on (Lightning's split, kept in-tree).

The loop owns epochs, early stopping, the resumable training state (``RUN/checkpoint``),
``history.json``, TensorBoard scalars, console lines, progress bars, mixed precision (its
autocast and gradient scaler), the resume policy (a resumed run must have the settings it
started with, except those the task says may change) and, under ``torchrun``, which rank
writes. A task supplies its model, optimizer and scheduler, one training epoch, validation,
which metric decides "best", and how to save the best model. The cross-entropy captioner,
SCST, the denoiser and the document-type classifier are its tasks; docs/ARCHITECTURE.md says
how to add one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from captioner import runlog
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json
from captioner.runtime import distributed
from captioner.runtime.distributed import DistContext
from captioner.training.checkpoint import (
    check_resume,
    check_resumed_settings,
    load_training_state,
    save_training_state,
)
from captioner.training.early_stopping import EarlyStopping
from captioner.training.precision import Precision

SETTINGS_FILE = "train_config.json"

T = TypeVar("T")


class EpochTools:
    """What the loop lends a task during an epoch: the run's precision, progress bars and
    per-step TensorBoard scalars (written by the main rank only)."""

    def __init__(self, precision: Precision, writer: Any | None, show_bars: bool) -> None:
        self.precision = precision
        self._writer = writer
        self._show_bars = show_bars

    def bar(self, iterable: Iterable[T], desc: str, **kwargs: Any) -> runlog.Progress[T]:
        kwargs.setdefault("unit", "batch")
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        return runlog.Progress(iterable, desc=desc, disable=not self._show_bars, **kwargs)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)


class Task(Protocol):
    """What the loop needs from a model task."""

    model: torch.nn.Module  # everything whose weights the training state keeps
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    device: torch.device
    monitor: str  # the validation key that decides the best epoch
    mode: str  # "max" (accuracy, CIDEr) or "min" (a loss)

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]: ...

    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        """Validation figures; an epoch whose figures lack ``monitor`` is not a candidate."""
        ...

    def end_epoch(self, row: dict[str, Any]) -> None:
        """After selection, before the state is saved (a plateau scheduler steps here)."""
        ...

    def save_best(self, row: dict[str, Any]) -> None:
        """Write the model of the best epoch so far (called on the main rank only)."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON state of the task itself (its own RNG, step count...), saved each epoch."""
        ...

    def load_state(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopSettings:
    epochs: int = 30
    patience: int = 5
    min_delta: float = 0.0
    progress: bool = True
    name: str = "training"  # what the console lines and refusals call the run
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (CUDA): see training/precision.py
    max_minutes: float | None = None  # stop before an epoch that would start past this
    score_start: bool = False  # epoch 0 scores the starting model: the best until beaten
    settings_file: str = SETTINGS_FILE
    loss_curve: bool = False  # plot train_loss / val_loss to RUN/loss_curve.png


@dataclass
class LoopResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped: str  # "epochs done", "early stop" or "time limit"
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def check_start(
    run_dir: Path,
    settings: LoopSettings,
    record: dict[str, Any],
    may_change: set[str],
    resume: bool,
) -> Path:
    """Refuse a start that would overwrite a run, or a resume with other settings; returns
    the state folder. ``fit`` calls it; a task that writes files while it is built calls it
    first, so that a refused start changes nothing."""
    state_dir = check_resume(run_dir, resume, f"a {settings.name} run")
    if resume:
        check_resumed_settings(
            run_dir / settings.settings_file, record, may_change, f"the {settings.name} run"
        )
    return state_dir


def fit(
    task: Task,
    run_dir: Path,
    settings: LoopSettings,
    *,
    record: dict[str, Any],
    may_change: set[str],
    resume: bool = False,
    ctx: DistContext | None = None,
) -> LoopResult:
    """Train ``task`` in ``run_dir``; ``record`` (JSON settings) goes to the settings file.

    With ``resume`` the run continues from its last finished epoch; an uninterrupted run and
    a killed and resumed one end with the same weights. Under ``torchrun`` (``ctx``) every
    rank runs the loop and only rank 0 writes files and prints.
    """
    run_dir = Path(run_dir)
    main = ctx is None or ctx.is_main
    state_dir = check_start(run_dir, settings, record, may_change, resume)
    show = settings.progress and main
    precision = Precision(settings.precision, task.device)
    stopper = EarlyStopping(
        patience=settings.patience, min_delta=settings.min_delta, mode=task.mode
    )
    history: list[dict[str, Any]] = []
    epoch, elapsed = 0, 0.0
    if resume:
        progress = load_training_state(state_dir, task.model, task.optimizer, task.scheduler)
        epoch = int(progress["epoch"])
        elapsed = float(progress.get("elapsed", progress.get("seconds", 0.0)))
        history = list(progress["history"])
        stopper.load_state_dict(progress["early_stopping"])
        stopper.patience = settings.patience
        # Checkpoints of the loops before this one kept these at the top level.
        precision.load_state_dict(progress.get("precision", progress.get("grad_scaler")))
        task.load_state(progress.get("task", progress))
        if main:
            runlog.say(settings.progress, f"resuming {run_dir} after epoch {epoch}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / settings.settings_file, record)

    writer = runlog.tensorboard_writer(run_dir / "tensorboard") if main else None
    tools = EpochTools(precision, writer, show)
    started = time.perf_counter() - elapsed
    stopped = "epochs done"

    def finish_epoch(row: dict[str, Any], improved: bool) -> None:
        history.append(row)
        task.end_epoch(row)
        if not main:
            return
        save_training_state(
            state_dir,
            task.model,
            task.optimizer,
            task.scheduler,
            {
                "epoch": row["epoch"],
                "elapsed": round(time.perf_counter() - started, 2),
                "history": history,
                "early_stopping": stopper.state_dict(),
                "precision": precision.state_dict(),
                "task": task.state(),
            },
        )
        atomic_write_json(run_dir / "history.json", history)
        if settings.loss_curve:
            from captioner.viz import plot_loss_curve

            plot_loss_curve(history, run_dir / "loss_curve.png")
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    writer.add_scalar(key, value, row["epoch"])
            writer.flush()
        shown = ", ".join(
            f"{k} {v:.4g}"
            for k, v in row.items()
            if k not in ("epoch", "seconds", "elapsed", "lr") and isinstance(v, int | float)
        )
        seconds = f" ({row['seconds']:.1f} s)" if "seconds" in row else ""
        runlog.say(
            show,
            f"{settings.name} epoch {row['epoch']}: {shown}{seconds}{' *' if improved else ''}",
        )

    try:
        if settings.score_start and not resume:
            scores = task.validate(0, tools)
            improved = _select(task, stopper, scores, 0)
            row = {"epoch": 0, **scores}
            if improved and main:
                task.save_best(row)
            finish_epoch(row, improved)
        while epoch < settings.epochs:
            if stopper.should_stop:
                stopped = "early stop"
                break
            minutes = (time.perf_counter() - started) / 60
            if settings.max_minutes and minutes >= settings.max_minutes:
                stopped = "time limit"
                break
            epoch += 1
            began = time.perf_counter()
            trained = task.train_epoch(epoch, tools)
            lr = task.optimizer.param_groups[0]["lr"]
            scores = task.validate(epoch, tools)
            improved = _select(task, stopper, scores, epoch)
            row = {
                "epoch": epoch,
                **trained,
                **scores,
                "lr": lr,
                "seconds": round(time.perf_counter() - began, 2),
                "elapsed": round(time.perf_counter() - started, 2),
            }
            if improved and main:
                task.save_best(row)
            finish_epoch(row, improved)
        else:
            if stopper.should_stop:
                stopped = "early stop"
    finally:
        if writer is not None:
            writer.close()
    if stopper.best is None:
        raise CaptionerError(f"{run_dir}: no epoch reported {task.monitor!r}; no model written")
    if ctx is not None:
        distributed.barrier(ctx)  # rank 0 has written the best model
    return LoopResult(
        best_epoch=stopper.best_epoch,
        best_score=float(stopper.best),
        epochs_run=epoch,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        history=history,
    )


def _select(task: Task, stopper: EarlyStopping, scores: dict[str, float], epoch: int) -> bool:
    if task.monitor not in scores:
        return False
    return stopper.update(float(scores[task.monitor]), epoch)
