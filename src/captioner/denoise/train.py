"""``captioner denoise train``: fit a DenoiserNet to clean photos corrupted on the fly.

An epoch is ``steps_per_epoch`` batches of random crops; after each one the model is scored
(PSNR/SSIM) on fixed noisy copies of held-out validation pictures, the best model is written
to ``OUT/model`` and the full state (weights, Adam, schedule, RNGs, history, early stopping)
to ``OUT/checkpoint`` so that ``--resume`` continues a killed run where it stopped.

With ``ema_decay`` > 0 an exponential moving average of the weights is kept beside them; it
is what is scored and saved (an average over roughly the last 1/(1 - decay) steps, so the
result depends less on where the last step of one run happened to land).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from captioner.denoise.corruption import CorruptionMix
from captioner.denoise.data import (
    list_images,
    load_pictures,
    random_batch,
    split_images,
    validation_set,
)
from captioner.denoise.denoiser import save_denoiser
from captioner.denoise.metrics import psnr, ssim
from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json
from captioner.runlog import say, tensorboard_writer
from captioner.training.checkpoint import (
    has_training_state,
    load_training_state,
    save_training_state,
)
from captioner.training.early_stopping import EarlyStopping


@dataclass
class DenoiseTrainConfig:
    images: str
    out: str
    epochs: int = 20
    steps_per_epoch: int = 250
    batch_size: int = 16
    patch_size: int = 96
    learning_rate: float = 3e-3
    adam_beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_fraction: float = 0.02
    clip_grad_norm: float = 1.0
    patience: int = 8
    val_images: int = 32
    max_images: int | None = None
    ema_decay: float = 0.999  # 0: no average, the last step's weights are scored and saved
    # a time limit makes the result depend on the machine's speed: off unless asked for
    max_minutes: float | None = None
    noise: str = "gaussian=0.65,jpeg=0.1,salt_pepper=0.1,speckle=0.1,none=0.05"
    sigma_min: float = 5.0
    sigma_max: float = 55.0
    model: dict[str, int] = field(default_factory=lambda: DenoiserConfig().to_dict())
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is fastest on a busy machine
    progress: bool = True

    def mix(self) -> CorruptionMix:
        try:
            return CorruptionMix.parse(self.noise, (self.sigma_min, self.sigma_max))
        except ValueError as exc:
            raise CaptionerError(f"--noise: {exc}") from None

    def check(self) -> None:
        if self.sigma_min < 0 or self.sigma_max < self.sigma_min:
            raise CaptionerError("need 0 <= --sigma-min <= --sigma-max")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_images"):
            if getattr(self, name) < 1:
                raise CaptionerError(f"{name} must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise CaptionerError("--ema-decay must be in [0, 1)")
        try:
            sizes = DenoiserConfig.from_dict(self.model)
        except (TypeError, ValueError) as exc:
            raise CaptionerError(f"bad denoiser sizes ({exc})") from None
        multiple = 2 ** len(sizes.widths)
        if self.patch_size < 16 or self.patch_size % multiple:
            raise CaptionerError(f"--patch-size must be >= 16 and a multiple of {multiple}")
        self.mix()


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
    state_dir, model_dir = out / "checkpoint", out / "model"
    if not resume and has_training_state(state_dir):
        raise CaptionerError(f"{out}: holds a denoiser run already; pass --resume or a new --out")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    mix = config.mix()
    files = list_images(config.images)
    train_files = split_images(files, "train")[: config.max_images]
    val_files = split_images(files, "val")[: config.val_images]
    if not train_files or not val_files:
        raise CaptionerError(
            f"{config.images}: too few images ({len(files)}) for a train/val split by file name"
        )
    say(config.progress, f"{len(train_files)} training and {len(val_files)} validation images")
    pictures, skipped = load_pictures(
        train_files, config.patch_size, config.progress, "loading train"
    )
    val_pictures, _ = load_pictures(val_files, 16)
    if skipped:
        say(config.progress, f"{len(skipped)} training images skipped (unreadable or too small)")
    if not pictures or not val_pictures:
        raise CaptionerError(f"{config.images}: no usable image of at least {config.patch_size} px")
    val = validation_set(val_pictures, mix, config.seed)

    device = torch.device(config.device)
    net = DenoiserNet(DenoiserConfig.from_dict(config.model)).to(device)
    ema = _averaged(net, config.ema_decay)
    scored = ema.module if ema is not None else net  # what is evaluated and saved
    # the training state holds the average too; without one it keeps its old layout
    state_model: torch.nn.Module = (
        torch.nn.ModuleDict({"net": net, "ema": ema}) if ema is not None else net
    )
    optimizer = torch.optim.Adam(
        net.parameters(), lr=config.learning_rate, betas=(0.9, config.adam_beta2)
    )
    total = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(total, config.warmup_steps, config.min_lr_fraction)
    )
    stopper = EarlyStopping(patience=config.patience, mode="max")
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    epoch, elapsed = 0, 0.0
    if resume and has_training_state(state_dir):
        progress = load_training_state(state_dir, state_model, optimizer, scheduler)
        epoch, elapsed, history = progress["epoch"], progress["seconds"], progress["history"]
        stopper.load_state_dict(progress["early_stopping"])
        rng.bit_generator.state = progress["rng"]
        say(config.progress, f"resuming after epoch {epoch}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "train_config.json", asdict(config))
    if epoch == 0:
        noisy_psnr = float(psnr(val["sigma25"][0], val["sigma25"][1]).mean())
        say(config.progress, f"validation noisy input: sigma 25 PSNR {noisy_psnr:.2f} dB")

    writer = tensorboard_writer(out / "tensorboard")
    started = time.perf_counter() - elapsed
    stopped = "epochs done"
    while epoch < config.epochs:
        if stopper.should_stop:
            stopped = "early stop"
            break
        if config.max_minutes and (time.perf_counter() - started) / 60 >= config.max_minutes:
            stopped = "time limit"
            break
        epoch += 1
        loss = _train_epoch(
            net, ema, optimizer, scheduler, pictures, mix, rng, config, epoch, device
        )
        scores = evaluate(scored, val, device)
        inactive = net.inactive_channels(val["mix"][0].to(device))
        record = {
            "epoch": epoch,
            "train_l1": loss,
            **scores,
            # channels of the trained weights never positive on validation (dead ReLUs)
            "inactive_channels": round(sum(inactive.values()) / max(len(inactive), 1), 4),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(record)
        improved = stopper.update(scores["val_psnr"], epoch)
        if improved:
            save_denoiser(scored, model_dir, _summary(config, history, stopper, len(pictures)))
        save_training_state(
            state_dir,
            state_model,
            optimizer,
            scheduler,
            {
                "epoch": epoch,
                "seconds": record["seconds"],
                "history": history,
                "early_stopping": stopper.state_dict(),
                "rng": rng.bit_generator.state,
            },
        )
        atomic_write_json(out / "history.json", history)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
        say(
            config.progress,
            f"epoch {epoch}: train L1 {loss:.4f}, val PSNR {scores['val_psnr']:.2f} dB "
            f"SSIM {scores['val_ssim']:.4f}, sigma 25 PSNR {scores['val_sigma25_psnr']:.2f} dB, "
            f"inactive channels {record['inactive_channels']:.0%} "
            f"({record['seconds']:.0f} s){' *' if improved else ''}",
        )
    if writer is not None:
        writer.close()
    if not (model_dir / "config.json").is_file():
        raise CaptionerError(f"{out}: no epoch finished; no model written")
    # Rewrite the best model's summary so it records how the run ended.
    _finalise_summary(model_dir, config, history, stopper, stopped, len(pictures))
    return DenoiseTrainResult(
        model_dir=model_dir,
        best_epoch=stopper.best_epoch,
        best_val_psnr=float(stopper.best or 0.0),
        epochs_run=epoch,
        seconds=time.perf_counter() - started,
        stopped=stopped,
        history=history,
    )


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


def _train_epoch(
    net: DenoiserNet,
    ema: AveragedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    pictures: list[np.ndarray],
    mix: CorruptionMix,
    rng: np.random.Generator,
    config: DenoiseTrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    net.train()
    total = 0.0
    bar = tqdm(
        range(config.steps_per_epoch),
        desc=f"denoiser epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    for step in bar:
        noisy, clean = random_batch(pictures, config.batch_size, config.patch_size, mix, rng)
        noisy, clean = noisy.to(device), clean.to(device)
        loss = F.l1_loss(net(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(net)
        total += float(loss.detach())
        if step % 10 == 0:
            bar.set_postfix(l1=f"{total / (step + 1):.4f}")
    return total / config.steps_per_epoch


@torch.inference_mode()
def evaluate(
    net: DenoiserNet, val: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Mean PSNR/SSIM of the model on the fixed validation copies."""
    net.eval()
    scores: dict[str, float] = {}
    for name, prefix in (("mix", "val"), ("sigma25", "val_sigma25")):
        noisy, clean = val[name]
        p, s = [], []
        for start in range(0, len(noisy), 8):
            x = noisy[start : start + 8].to(device)
            y = clean[start : start + 8].to(device)
            estimate = net(x).clamp(0.0, 1.0)
            p.append(psnr(estimate, y))
            s.append(ssim(estimate, y))
        scores[f"{prefix}_psnr"] = round(float(torch.cat(p).mean()), 4)
        scores[f"{prefix}_ssim"] = round(float(torch.cat(s).mean()), 5)
    return scores


def _schedule(total: int, warmup: int, floor: float) -> Any:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _summary(
    config: DenoiseTrainConfig,
    history: list[dict[str, Any]],
    stopper: EarlyStopping,
    num_images: int,
    stopped: str | None = None,
) -> dict[str, Any]:
    best = next((h for h in history if h["epoch"] == stopper.best_epoch), history[-1])
    summary = {
        "images": str(config.images),
        "train_images": num_images,
        "corruption": config.mix().describe(),
        "patch_size": config.patch_size,
        "batch_size": config.batch_size,
        "ema_decay": config.ema_decay,
        "steps": len(history) * config.steps_per_epoch,
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(history),
        "seconds": history[-1]["seconds"],
        "val": {k: v for k, v in best.items() if k.startswith("val")},
    }
    if stopped:
        summary["stopped"] = stopped
    return summary


def _finalise_summary(
    model_dir: Path,
    config: DenoiseTrainConfig,
    history: list[dict[str, Any]],
    stopper: EarlyStopping,
    stopped: str,
    num_images: int,
) -> None:
    meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    meta["training"] = _summary(config, history, stopper, num_images, stopped)
    atomic_write_json(model_dir / "config.json", meta)


def resume_config(
    out: str | Path,
    epochs: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    device: str = "cpu",
    threads: int | None = None,
) -> DenoiseTrainConfig:
    """The saved run's settings; only the epoch count, time limit, device and display change."""
    path = Path(out) / "train_config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved.setdefault("ema_decay", 0.0)  # runs started before the average existed
        config = DenoiseTrainConfig(**saved)
    except FileNotFoundError:
        raise CaptionerError(f"{out}: nothing to resume (no train_config.json)") from None
    except (TypeError, ValueError) as exc:
        raise CaptionerError(f"{path}: not a denoiser training config ({exc})") from None
    if epochs is not None:
        config.epochs = epochs
    if max_minutes is not None:
        config.max_minutes = max_minutes
    config.progress = progress
    config.device = device
    if threads is not None:
        config.threads = threads
    return config
