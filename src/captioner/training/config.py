"""Typed training configuration, loadable from YAML and overridable from the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from captioner.caption.config import DecoderShape
from captioner.cliargs import parse_assignments
from captioner.errors import CaptionerError
from captioner.training.precision import PRECISIONS
from captioner.vision.views import parse_views

SELECTABLE = ("val_loss", "BLEU-4", "CIDEr")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved beside its checkpoints as ``train_config.json``."""

    manifest: str = ""
    features: str = ""
    out: str = "runs/train"
    # vocabulary
    vocab_size: int = 5000
    min_word_count: int = 1
    max_caption_length: int = 40  # words; longer training captions are truncated
    # the decoder's shape (YAML ``model: {dropout: 0.3}``, ``--set model.dropout=0.3``)
    model: DecoderShape = field(default_factory=DecoderShape)
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    attention_lambda: float = 0.0
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"  # "constant" | "plateau" (halve on a val-loss plateau)
    patience: int = 3
    min_delta: float = 0.0
    # model selection: the validation loss, or a caption metric computed by real decoding
    select_on: str = "val_loss"  # "val_loss" | "BLEU-4" | "CIDEr"
    eval_every: int = (
        0  # decode the validation split every N epochs (0: only if select_on needs it)
    )
    eval_beam_size: int = 1
    # runtime
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 100
    progress: bool = True
    precision: str = "fp32"  # "fp32" | "bf16" (CPU or CUDA) | "fp16" (CUDA, GradScaler) | "auto"
    compile: bool = False  # torch.compile the decoder's training forward
    tags: dict[str, str] = field(default_factory=dict)
    # augmentation: views of the training images (vision/views.py; `extract --views`), one drawn
    # per caption and epoch beside the plain features. For aerial photos, not for "left of".
    views: list[str] = field(default_factory=list)
    # fine-tuning (training/finetune.py): train the backbone's last N blocks with the decoder,
    # on the maps `extract --top-blocks N` cached; after fine_tune_after epochs of decoder only
    fine_tune_blocks: int = 0
    backbone_learning_rate: float = 1e-4
    fine_tune_after: int = 0
    # "captions": drawn alone, as on frozen grids (the blocks run once per caption); "images":
    # whole images per batch (once per image: cheaper, but it trained worse on UCM, RESULTS.md)
    fine_tune_batches: str = "captions"
    backbone_weights: str = "DEFAULT"  # the weights the maps were extracted with

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # from YAML or train_config.json
            self.model = _shape(self.model)
        self.views = parse_views(self.views)
        if self.lr_schedule not in ("constant", "plateau"):
            raise CaptionerError(
                f"lr_schedule must be 'constant' or 'plateau', not {self.lr_schedule!r}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise CaptionerError("epochs, batch_size and patience must be >= 1")
        if self.learning_rate <= 0 or self.backbone_learning_rate <= 0:
            raise CaptionerError("learning_rate and backbone_learning_rate must be > 0")
        if self.fine_tune_blocks < 0 or self.fine_tune_after < 0:
            raise CaptionerError("fine_tune_blocks and fine_tune_after must be >= 0")
        if self.fine_tune_batches not in ("images", "captions"):
            raise CaptionerError(
                f"fine_tune_batches must be 'images' or 'captions', not {self.fine_tune_batches!r}"
            )
        if self.fine_tune_blocks and self.compile:
            raise CaptionerError("compile is for a decoder on cached grids, not with fine-tuning")
        if self.precision not in PRECISIONS:
            raise CaptionerError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.select_on not in SELECTABLE:
            raise CaptionerError(f"select_on must be one of {', '.join(SELECTABLE)}")
        if self.select_on != "val_loss" and self.eval_every < 1:
            self.eval_every = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        moved = [k for k in unknown if k in SHAPE_FIELDS]
        if moved:
            raise CaptionerError(
                f"{', '.join(moved)}: the decoder's sizes are under model: now "
                f"(YAML 'model: {{{moved[0]}: ...}}', --set model.{moved[0]}=...)"
            )
        if unknown:
            raise CaptionerError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml_mapping(path, "config file", "a mapping of settings"))

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key=value`` strings (nanoGPT-style overrides; ``model.KEY`` for the decoder's
        shape), each value read as the type its field declares."""
        values = parse_assignments(TrainConfig, assignments)
        if isinstance(values.get("model"), dict):
            values["model"] = replace(self.model, **values["model"])
        return replace(self, **values)


SHAPE_FIELDS = {f.name for f in fields(DecoderShape)}


def _shape(data: dict[str, Any]) -> DecoderShape:
    unknown = sorted(set(data) - SHAPE_FIELDS)
    if unknown:
        raise CaptionerError(f"unknown decoder settings under model: {', '.join(unknown)}")
    try:
        return DecoderShape(**data)
    except ValueError as exc:
        raise CaptionerError(f"model: {exc}") from None


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: {}); any problem is one error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise CaptionerError(f"{path}: {what} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise CaptionerError(f"{path}: expected {expected}")
    return data
