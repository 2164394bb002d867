"""The pipeline's settings (a light module: the CLI parser reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.caption.decode_settings import DecodeSettings
from captioner.errors import CaptionerError


@dataclass
class PipelineSettings:
    """What is captioned and how; the fields that change results are in the signature."""

    caption_kinds: tuple[str, ...] | None = None  # None: the classifier's photo class
    caption_all: bool = False  # caption every readable image, whatever its kind
    photo_threshold: float | None = None  # None: the classifier's own
    denoise_size: str = "input"  # "input": at the captioner's resolution; "full": whole image
    beam_size: int = DecodeSettings.beam_size  # 1: greedy
    max_length: int = DecodeSettings.max_length
    length_penalty: float = 1.0
    attention: bool = False  # write an attention-map PNG per captioned image
    save_denoised: bool = False  # write a full-resolution denoised copy of each denoised file
    thumbnails: bool = True
    batch_size: int = 32  # files per batch: one transaction, one decoding job
    forward_batch: int | None = None  # images per model pass; None: 8 on a CPU, batch on a GPU
    num_workers: int = 2
    retry_failed: bool = False  # process again files whose row records an error

    def __post_init__(self) -> None:
        if self.denoise_size not in ("input", "full"):
            raise CaptionerError(f"denoise size {self.denoise_size!r}: use 'input' or 'full'")
        if self.batch_size < 1:
            raise CaptionerError(f"batch size {self.batch_size}: must be at least 1")
        if self.forward_batch is not None and self.forward_batch < 1:
            raise CaptionerError(f"forward batch {self.forward_batch}: must be at least 1")
        if self.beam_size < 1 or self.max_length < 1:
            raise CaptionerError("beam size and max length must be at least 1")
        if self.photo_threshold is not None and not 0.0 <= self.photo_threshold <= 1.0:
            raise CaptionerError(f"photo threshold {self.photo_threshold}: must be in [0, 1]")
