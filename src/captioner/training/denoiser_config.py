"""Settings of a denoiser training run (``captioner denoise train``), saved beside it as
``train_config.json``, and how a resumed run reads them back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from captioner.denoise.corruption import CorruptionMix
from captioner.denoise.model import DenoiserConfig
from captioner.errors import CaptionerError
from captioner.training.precision import PRECISIONS

# Settings a resumed run may change: how long it goes on, where and how it runs and shows.
MAY_CHANGE = {"epochs", "max_minutes", "progress", "device", "threads", "precision"}


@dataclass
class DenoiseTrainConfig:
    images: str
    out: str
    # The output uses the lower levels only once the rate is down to about 1e-3 after some
    # 3,000 steps; 30 epochs from 2e-3 leave every run 15 epochs after that point, so seeds
    # and thread counts end together (20 epochs from 3e-3 spread them by 0.8 dB;
    # docs/RESULTS.md, "The plateau is the lower levels left unused").
    epochs: int = 30
    steps_per_epoch: int = 250
    batch_size: int = 16
    patch_size: int = 96
    learning_rate: float = 2e-3
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # Adam's rate for the residual gains is this times the rate of the other weights
    # (an experiment knob: 0.01 and 10 train along the default's curve, docs/RESULTS.md).
    gain_lr_factor: float = 1.0
    warmup_steps: int = 100
    min_lr_fraction: float = 0.02
    # weight of the auxiliary L1 losses on the lower levels (training/deep_supervision.py);
    # 0: none, and the training state keeps the layout of runs saved before the setting
    deep_supervision: float = 0.0
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
    model: dict[str, object] = field(default_factory=lambda: DenoiserConfig().to_dict())
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is fastest on a busy machine
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (CUDA): autocast of the training steps
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
        if self.precision not in PRECISIONS:
            raise CaptionerError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.adam_eps <= 0:
            raise CaptionerError("--adam-eps must be positive")
        if self.deep_supervision < 0:
            raise CaptionerError("--deep-supervision must be >= 0")
        if self.gain_lr_factor <= 0:
            raise CaptionerError("--gain-lr-factor must be positive")
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


def resume_config(
    out: str | Path,
    epochs: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    device: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> DenoiseTrainConfig:
    """The saved run's settings; only those in ``MAY_CHANGE`` can be given anew."""
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
    if device is not None:
        config.device = device
    if threads is not None:
        config.threads = threads
    if precision is not None:
        config.precision = precision
    return config
