"""Model 2's training (``captioner denoise train``) as a task of the shared loop.

An epoch is ``steps_per_epoch`` batches of random crops of clean photos corrupted on the fly;
after each one the model is scored (PSNR/SSIM) on fixed noisy copies of held-out validation
pictures, the best model is written to ``OUT/model`` and the loop keeps the full state
(weights, Adam, schedule, RNGs, history, early stopping) in ``OUT/checkpoint`` so that
``--resume`` continues a killed run where it stopped.

With ``ema_decay`` > 0 an exponential moving average of the weights is kept beside them; it
is what is scored and saved (an average over roughly the last 1/(1 - decay) steps, so the
result depends less on where the last step of one run happened to land).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from captioner.denoise.data import (
    list_images,
    load_pictures,
    random_batch,
    split_images,
    validation_set,
)
from captioner.denoise.denoiser import save_denoiser
from captioner.denoise.metrics import psnr, score_denoiser
from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json
from captioner.runlog import say
from captioner.training.checkpoint import has_training_state
from captioner.training.deep_supervision import LevelHeads
from captioner.training.denoiser_config import MAY_CHANGE, DenoiseTrainConfig
from captioner.training.loop import EpochTools, LoopResult, LoopSettings, check_start, fit


@dataclass
class DenoiseTrainResult:
    model_dir: Path
    best_epoch: int
    best_val_psnr: float
    epochs_run: int
    seconds: float
    stopped: str
    history: list[dict[str, Any]]


def train_denoiser(config: DenoiseTrainConfig, resume: bool = False) -> DenoiseTrainResult:
    config.check()
    out = Path(config.out)
    # A run killed before its first epoch ended has nothing to resume: it starts again.
    resume = resume and has_training_state(out / "checkpoint")
    settings = LoopSettings(
        epochs=config.epochs,
        patience=config.patience,
        progress=config.progress,
        name="denoiser",
        precision=config.precision,
        max_minutes=config.max_minutes,
    )
    record = asdict(config)
    check_start(out, settings, record, MAY_CHANGE, resume)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    task = DenoiserTask(config)
    result = fit(task, out, settings, record=record, may_change=MAY_CHANGE, resume=resume)
    model_dir = out / "model"
    # Rewrite the best model's summary so it records how the run ended.
    meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    meta["training"] = task.summary(result)
    atomic_write_json(model_dir / "config.json", meta)
    return DenoiseTrainResult(
        model_dir=model_dir,
        best_epoch=result.best_epoch,
        best_val_psnr=result.best_score,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
        stopped=result.stopped,
        history=result.history,
    )


class DenoiserTask:
    """L1 between the network's output and the clean crop, scored on PSNR of validation."""

    monitor = "val_psnr"
    mode = "max"

    def __init__(self, config: DenoiseTrainConfig) -> None:
        self.config = config
        self.mix = mix = config.mix()
        files = list_images(config.images)
        train_files = split_images(files, "train")[: config.max_images]
        val_files = split_images(files, "val")[: config.val_images]
        if not train_files or not val_files:
            raise CaptionerError(
                f"{config.images}: too few images ({len(files)}) for a train/val split by file name"
            )
        say(config.progress, f"{len(train_files)} training and {len(val_files)} validation images")
        self.pictures, skipped = load_pictures(
            train_files, config.patch_size, config.progress, "loading train"
        )
        val_pictures, _ = load_pictures(val_files, 16)
        if skipped:
            say(
                config.progress, f"{len(skipped)} training images skipped (unreadable or too small)"
            )
        if not self.pictures or not val_pictures:
            raise CaptionerError(
                f"{config.images}: no usable image of at least {config.patch_size} px"
            )
        self.val = validation_set(val_pictures, mix, config.seed)
        noisy_psnr = float(psnr(self.val["sigma25"][0], self.val["sigma25"][1]).mean())
        say(config.progress, f"validation noisy input: sigma 25 PSNR {noisy_psnr:.2f} dB")

        self.device = torch.device(config.device)
        self.net = DenoiserNet(DenoiserConfig.from_dict(config.model)).to(self.device)
        self.ema = _averaged(self.net, config.ema_decay)
        self.scored = self.ema.module if self.ema is not None else self.net  # evaluated, saved
        self.heads = LevelHeads(self.net).to(self.device) if config.deep_supervision else None
        # the training state holds the average and the heads too; without them it keeps the
        # layout of older runs
        parts = {"net": self.net, "ema": self.ema, "heads": self.heads}
        present = {k: v for k, v in parts.items() if v is not None}
        self.model: torch.nn.Module = torch.nn.ModuleDict(present) if len(present) > 1 else self.net
        groups = parameter_groups(self.net, config.learning_rate, config.gain_lr_factor)
        if self.heads is not None:
            groups.append({"params": list(self.heads.parameters())})
        self.optimizer = torch.optim.Adam(
            groups,
            lr=config.learning_rate,
            betas=(0.9, config.adam_beta2),
            eps=config.adam_eps,
        )
        total = config.epochs * config.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, config.warmup_steps, config.min_lr_fraction)
        )
        self.rng = np.random.default_rng(config.seed)

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        config, net = self.config, self.net
        net.train()
        total = 0.0
        bar = tools.bar(
            range(config.steps_per_epoch), desc=f"denoiser epoch {epoch}/{config.epochs}"
        )
        for step in bar:
            noisy, clean = random_batch(
                self.pictures, config.batch_size, config.patch_size, self.mix, self.rng
            )
            noisy, clean = noisy.to(self.device), clean.to(self.device)
            auxiliary = None
            with tools.precision.autocast():
                if self.heads is None:
                    estimate = net(noisy)
                else:
                    estimate, levels = net.forward_levels(noisy)
                    auxiliary = self.heads.loss(levels, noisy, clean)
            loss = F.l1_loss(estimate.float(), clean)
            total += float(loss.detach())  # the output's L1 only, with or without the heads
            if auxiliary is not None:
                loss = loss + config.deep_supervision * auxiliary
            self.optimizer.zero_grad(set_to_none=True)
            tools.precision.backward_and_step(
                loss, self.optimizer, self._trained_parameters, config.clip_grad_norm
            )
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(net)
            if step % 10 == 0:
                bar.set_postfix(l1=f"{total / (step + 1):.4f}")
        return {"train_l1": total / config.steps_per_epoch}

    def _trained_parameters(self) -> Iterator[torch.nn.Parameter]:
        yield from self.net.parameters()
        if self.heads is not None:
            yield from self.heads.parameters()

    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        scores = score_denoiser(self.scored, self.val, self.device)
        inactive = self.net.inactive_channels(self.val["mix"][0].to(self.device))
        # channels of the trained weights never positive on validation (dead ReLUs)
        scores["inactive_channels"] = round(sum(inactive.values()) / max(len(inactive), 1), 4)
        return scores

    def end_epoch(self, row: dict[str, Any]) -> None:
        return None

    def save_best(self, row: dict[str, Any]) -> None:
        summary = self._summary(row, epochs_run=row["epoch"], seconds=row["elapsed"])
        save_denoiser(self.scored, Path(self.config.out) / "model", summary)

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def summary(self, result: LoopResult) -> dict[str, Any]:
        """The best model's summary once the run has ended (``result`` of the loop)."""
        best = next(h for h in result.history if h["epoch"] == result.best_epoch)
        summary = self._summary(
            best, epochs_run=len(result.history), seconds=result.history[-1]["elapsed"]
        )
        summary["stopped"] = result.stopped
        return summary

    def _summary(self, best: dict[str, Any], epochs_run: int, seconds: float) -> dict[str, Any]:
        config = self.config
        return {
            "images": str(config.images),
            "train_images": len(self.pictures),
            "corruption": self.mix.describe(),
            "patch_size": config.patch_size,
            "batch_size": config.batch_size,
            "ema_decay": config.ema_decay,
            "deep_supervision": config.deep_supervision,
            "steps": epochs_run * config.steps_per_epoch,
            "best_epoch": best["epoch"],
            "epochs_run": epochs_run,
            "seconds": seconds,
            "val": {k: v for k, v in best.items() if k.startswith("val")},
        }


def parameter_groups(net: DenoiserNet, lr: float, gain_factor: float) -> list[dict[str, Any]]:
    """Adam's parameter groups: the residual gains in a group of their own when their rate
    differs; otherwise one group, the optimizer layout of runs saved before ``gain_lr_factor``
    (they resume)."""
    gains = net.residual_gains() if gain_factor != 1.0 else []
    if not gains:
        return [{"params": list(net.parameters())}]
    gain_ids = {id(p) for p in gains}
    others = [p for p in net.parameters() if id(p) not in gain_ids]
    return [{"params": others}, {"params": gains, "lr": lr * gain_factor}]


def _averaged(net: DenoiserNet, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``net``'s weights. Its decay ramps up as
    ``(1 + n) / (10 + n)`` (n: updates so far) to ``decay``, so that a short run's average
    is not still the initial weights."""
    if decay <= 0:
        return None

    def update(average: Tensor, current: Tensor, updates: Tensor) -> Tensor:
        n = float(updates)
        rate = min(decay, (1.0 + n) / (10.0 + n))
        return average + (current - average) * (1.0 - rate)

    return AveragedModel(net, avg_fn=update, use_buffers=True)


def warmup_cosine(total: int, warmup: int, floor: float) -> Any:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
