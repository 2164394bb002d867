"""Settings of ``captioner classify train`` (no torch import: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from captioner.data.labelled import DEFAULT_GROUP_PATTERN

#: Settings a resumed run may change (where things are, how they are shown, the budget).
MAY_CHANGE = {
    "out",
    "features",
    "device",
    "workers",
    "progress",
    "epochs",
    "patience",
    "extract_batch_size",
}


@dataclass
class ClassifierTrainConfig:
    """Every setting of ``captioner classify train``, with its default."""

    data: list[str] = field(default_factory=list)  # ROOT, LABEL=DIR, file.csv, file.jsonl
    out: str = "runs/doctype"
    features: str | None = None  # pooled-feature caches (default OUT/features); shareable
    backbone: str = "mobilenet_v2"
    weights: str = "DEFAULT"
    image_size: int | None = None  # square input side in px; None: the backbone's own (224)
    # inner blocks whose per-channel mean/std the head reads too: "auto" (the backbone's stage
    # ends; MobileNetV2 3,6,10,13,16), "none", or block numbers "3,6,10"
    style_blocks: str = "auto"
    split_by: str = "group"
    val_fraction: float = 0.15  # early stopping and calibration (seen sources)
    test_fraction: float = 0.25  # the figures; with split_by="group", unseen sources
    group_pattern: str = DEFAULT_GROUP_PATTERN
    max_per_group: int | None = 300
    views: int = 3  # scan-augmented views of each training image, besides the clean one
    synthetic: int = 150  # drawn charts, diagrams, printed pages per generator (training only)
    epochs: int = 60
    patience: int = 15
    balance: str = "source"  # loss weights: "class" (classes equal) or "source" (sources too)
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.5
    label_smoothing: float = 0.1
    photo_class: str = "Photo"
    photo_threshold: float = 0.5
    noise_sigma: float = 25.0  # the noisy validation and test view
    # optional second phase (training/classifier_finetune.py): the backbone's last N blocks
    # fine-tuned with the head, on cached maps of the clean image and fine_tune_views views
    fine_tune_blocks: int = 0
    fine_tune_views: int = 1
    fine_tune_epochs: int = 8
    fine_tune_batch_size: int = 64
    fine_tune_learning_rate: float = 1e-4  # the head's, in that phase
    backbone_learning_rate: float = 1e-4
    seed: int = 0
    extract_batch_size: int = 32
    workers: int = 2
    device: str = "cpu"
    progress: bool = True
