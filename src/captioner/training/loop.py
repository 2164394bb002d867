"""The epoch loop shared by model tasks (Lightning's split, kept in-tree).

The loop owns epochs, early stopping, the resumable training state (``RUN/checkpoint``),
``history.json``, TensorBoard scalars, console lines and the resume policy (a resumed run
must have the settings it started with, except those the task says may change). A task
supplies its model, optimizer and scheduler, one training epoch, validation, which metric
decides "best", and how to save the best model. The document-type classifier runs on it;
see docs/ARCHITECTURE.md for how to add a task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from captioner import runlog
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json
from captioner.training.checkpoint import (
    check_resume,
    check_resumed_settings,
    load_training_state,
    save_training_state,
)
from captioner.training.early_stopping import EarlyStopping

SETTINGS_FILE = "train_config.json"


class Task(Protocol):
    """What the loop needs from a model task."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    monitor: str  # the validation metric that decides the best epoch
    mode: str  # "max" (accuracy, F1) or "min" (a loss)

    def train_epoch(self, epoch: int) -> dict[str, float]: ...

    def validate(self) -> dict[str, float]: ...

    def save_best(self, record: dict[str, Any]) -> None: ...

    def state(self) -> dict[str, Any]:
        """JSON state of the task itself (its own RNG...), saved with each checkpoint."""
        ...

    def load_state(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopSettings:
    epochs: int = 30
    patience: int = 5
    min_delta: float = 0.0
    progress: bool = True
    name: str = "training"  # what the console lines call the run


@dataclass
class LoopResult:
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped: str  # "epochs done" or "early stop"
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(
    task: Task,
    run_dir: Path,
    settings: LoopSettings,
    *,
    record: dict[str, Any],
    may_change: set[str],
    resume: bool = False,
) -> LoopResult:
    """Train ``task`` in ``run_dir``; ``record`` (JSON settings) goes to train_config.json.

    With ``resume`` the run continues from its last finished epoch, refusing settings that
    differ from the record except those in ``may_change``; an uninterrupted run and a killed
    and resumed one end with the same weights.
    """
    run_dir = Path(run_dir)
    state_dir = check_resume(run_dir, resume, f"a {settings.name} run")
    settings_path = run_dir / SETTINGS_FILE
    stopper = EarlyStopping(
        patience=settings.patience, min_delta=settings.min_delta, mode=task.mode
    )
    history: list[dict[str, Any]] = []
    epoch, elapsed = 0, 0.0
    if resume:
        check_resumed_settings(settings_path, record, may_change, f"the {settings.name} run")
        progress = load_training_state(state_dir, task.model, task.optimizer, task.scheduler)
        epoch, elapsed = int(progress["epoch"]), float(progress["seconds"])
        history = list(progress["history"])
        stopper.load_state_dict(progress["early_stopping"])
        stopper.patience = settings.patience
        task.load_state(progress["task"])
        runlog.say(settings.progress, f"resuming {run_dir} after epoch {epoch}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings_path, record)

    writer = runlog.tensorboard_writer(run_dir / "tensorboard")
    started = time.perf_counter() - elapsed
    stopped = "epochs done"
    try:
        while epoch < settings.epochs:
            if stopper.should_stop:
                stopped = "early stop"
                break
            epoch += 1
            scores = {**task.train_epoch(epoch), **task.validate()}
            if task.monitor not in scores:
                raise CaptionerError(f"task reported no {task.monitor!r} (has {sorted(scores)})")
            row = {
                "epoch": epoch,
                **scores,
                "lr": task.optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 2),
            }
            history.append(row)
            improved = stopper.update(float(scores[task.monitor]), epoch)
            if improved:
                task.save_best(row)
            save_training_state(
                state_dir,
                task.model,
                task.optimizer,
                task.scheduler,
                {
                    "epoch": epoch,
                    "seconds": row["seconds"],
                    "history": history,
                    "early_stopping": stopper.state_dict(),
                    "task": task.state(),
                },
            )
            atomic_write_json(run_dir / "history.json", history)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, int | float):
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, int | float)
            )
            runlog.say(
                settings.progress,
                f"{settings.name} epoch {epoch}: {shown} ({row['seconds']:.1f} s)"
                f"{' *' if improved else ''}",
            )
        else:
            if stopper.should_stop:
                stopped = "early stop"
    finally:
        if writer is not None:
            writer.close()
    if not history:
        raise CaptionerError(f"{run_dir}: no epoch finished; no model written")
    return LoopResult(
        best_epoch=stopper.best_epoch,
        best_score=float(stopper.best if stopper.best is not None else 0.0),
        epochs_run=epoch,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        history=history,
    )
