"""Settings of an SCST run (``captioner scst``), saved beside it as ``scst_config.json``."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.caption.decode_settings import DecodeSettings
from captioner.errors import CaptionerError


@dataclass
class ScstConfig:
    model: str  # folder of the cross-entropy model to start from
    manifest: str
    features: str
    out: str
    epochs: int = 20
    learning_rate: float = 2e-5
    samples: int = 5  # captions sampled per image
    batch_images: int = 32
    max_length: int = DecodeSettings.max_length
    grad_clip: float = 5.0
    select_on: str = "CIDEr"  # "CIDEr" | "BLEU-4", on the validation split
    eval_beam_size: int = DecodeSettings.beam_size
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise CaptionerError("scst needs at least 2 samples per image (leave-one-out baseline)")
        if self.epochs < 1 or self.batch_images < 1 or self.patience < 1:
            raise CaptionerError("epochs, batch_images and patience must be >= 1")
        if self.learning_rate <= 0:
            raise CaptionerError("learning_rate must be > 0")
        if self.select_on not in ("CIDEr", "BLEU-4"):
            raise CaptionerError("select_on must be CIDEr or BLEU-4")
