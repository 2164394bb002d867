"""Train model 1: the head on cached pooled features of clean and scan-augmented views.

Steps: read the labelled sources and split them (by source group by default), cache the
backbone's pooled features of each training image under ``views`` scan-like augmentations plus
the clean image, and of each validation image clean and with Gaussian noise; train the head
with class-balanced cross-entropy on the shared epoch loop (early stopping on the validation
loss, resume, TensorBoard); fit a temperature on validation; save the model folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captioner.data.labelled import (
    LabelledImage,
    LabelledSet,
    assign_splits,
    read_sources,
)
from captioner.doctype.augment import NoiseView, ScanAugment
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.config import MAY_CHANGE, ClassifierTrainConfig
from captioner.doctype.features import extract_view, pooled_backbone
from captioner.doctype.metrics import classification_metrics, fit_temperature
from captioner.doctype.model import DocTypeConfig, DocTypeHead
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json, load_state
from captioner.runlog import say
from captioner.training.checkpoint import check_resume
from captioner.training.loop import LoopSettings, fit
from captioner.vision.backbones import Backbone, load_backbone


@dataclass
class ClassifierTrainResult:
    model_dir: Path
    best_epoch: int
    epochs_run: int
    stopped: str
    temperature: float
    val_clean: dict[str, Any]
    val_noisy: dict[str, Any]
    seconds: float
    data: LabelledSet


@dataclass
class _Features:
    x: torch.Tensor  # [N, C]
    y: torch.Tensor  # [N]


def train_classifier(config: ClassifierTrainConfig, resume: bool = False) -> ClassifierTrainResult:
    started = time.perf_counter()
    out = Path(config.out)
    check_resume(out, resume, "a classifier training run")
    torch.manual_seed(config.seed)
    data = _labelled_data(config, out, resume)
    backbone = load_backbone(config.backbone, config.weights)
    pooled = pooled_backbone(backbone)
    train_items, val_items = data.split("train"), data.split("val")
    if not train_items or not val_items:
        raise CaptionerError(
            f"{', '.join(config.data)}: the split left no training or no validation images"
        )
    classes = data.classes
    feats = out / "features"
    train_views: list[tuple[str, Any]] = [("train-clean", None)]
    train_views += [
        (f"train-aug{v}", ScanAugment(view=v, seed=config.seed)) for v in range(config.views)
    ]
    train = _stack(
        [_view(train_items, feats, pooled, name, t, classes, config) for name, t in train_views]
    )
    val_clean = _view(val_items, feats, pooled, "val-clean", None, classes, config)
    val_noisy = _view(
        val_items,
        feats,
        pooled,
        f"val-noise{config.noise_sigma:g}",
        NoiseView(config.noise_sigma, config.seed),
        classes,
        config,
    )
    if len(train.y) == 0 or len(val_clean.y) == 0:
        raise CaptionerError("no readable training or validation image")

    head = DocTypeHead(backbone.channels, len(classes), config.dropout)
    head.set_standardisation(train.x)
    model_config = DocTypeConfig(
        classes=classes,
        backbone=backbone.name,
        backbone_weights_id=backbone.weights_id,
        channels=backbone.channels,
        dropout=config.dropout,
        photo_class=config.photo_class,
        photo_threshold=config.photo_threshold,
    )
    if config.photo_class not in classes:
        say(config.progress, f"note: no {config.photo_class!r} class; photo figures are left out")
        model_config.photo_class = None
    task = _HeadTask(
        head,
        train,
        _stack([val_clean, val_noisy]),
        config,
        DocTypeClassifier(head, model_config),
        out / "model",
    )
    result = fit(
        task,
        out,
        LoopSettings(config.epochs, config.patience, progress=config.progress, name="classifier"),
        record=asdict(config),
        may_change=MAY_CHANGE,
        resume=resume,
    )
    load_state(head, out / "model" / "model.safetensors")
    head.eval()
    with torch.no_grad():
        val_logits = head(torch.cat([val_clean.x, val_noisy.x])).numpy()
    val_labels = torch.cat([val_clean.y, val_noisy.y]).numpy()
    model_config.temperature = fit_temperature(val_logits, val_labels)
    classifier = DocTypeClassifier(head, model_config)
    reports = {
        name: classification_metrics(
            part.y.numpy(),
            classifier.probabilities_of_pooled(part.x).numpy(),
            classes,
            config.photo_class,
            model_config.photo_threshold,
        )
        for name, part in (("clean", val_clean), (f"noise_{config.noise_sigma:g}", val_noisy))
    }
    info = {
        "data": list(config.data),
        "split": data.split_info,
        "counts": data.counts(),
        "views": config.views,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped": result.stopped,
        "temperature": model_config.temperature,
        "val": reports,
        "seconds": round(time.perf_counter() - started, 1),
    }
    classifier.save_pretrained(out / "model", info)
    atomic_write_json(out / "val_report.json", reports)
    noisy_key = f"noise_{config.noise_sigma:g}"
    return ClassifierTrainResult(
        model_dir=out / "model",
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped=result.stopped,
        temperature=model_config.temperature,
        val_clean=reports["clean"],
        val_noisy=reports[noisy_key],
        seconds=time.perf_counter() - started,
        data=data,
    )


def _labelled_data(config: ClassifierTrainConfig, out: Path, resume: bool) -> LabelledSet:
    """The run's images and split: read and split once, reused as they are on resume."""
    path = out / "data.json"
    if resume and path.is_file():
        return LabelledSet.load(path)
    if not config.data:
        raise CaptionerError("no --data given (class folders, LABEL=DIR, or a CSV/JSONL file)")
    data = read_sources(
        config.data,
        group_pattern=config.group_pattern,
        max_per_group=config.max_per_group,
        seed=config.seed,
    )
    assign_splits(data, by=config.split_by, val_fraction=config.val_fraction, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data


def _view(
    items: list[LabelledImage],
    folder: Path,
    pooled: Backbone,
    name: str,
    transform: Any,
    classes: list[str],
    config: ClassifierTrainConfig,
) -> _Features:
    view = extract_view(
        [item.path for item in items],
        folder,
        pooled,
        name,
        transform,
        batch_size=config.extract_batch_size,
        num_workers=config.workers,
        device=config.device,
        progress=config.progress,
    )
    for key, problem in list(view.failed.items())[:5]:
        say(config.progress, f"skipped {key}: {problem}")
    if len(view.failed) > 5:
        say(config.progress, f"... and {len(view.failed) - 5} more unreadable images ({name})")
    ok = view.ok
    labels = np.asarray([classes.index(item.label) for item in items], dtype=np.int64)
    return _Features(torch.from_numpy(view.features[ok]), torch.from_numpy(labels[ok]))


def _stack(parts: list[_Features]) -> _Features:
    return _Features(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


class _HeadTask:
    """The classifier head as a task of the shared loop."""

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self,
        head: DocTypeHead,
        train: _Features,
        val: _Features,
        config: ClassifierTrainConfig,
        classifier: DocTypeClassifier,
        model_dir: Path,
    ) -> None:
        self.model = head
        self.train = train
        self.val = val
        self.config = config
        self.classifier = classifier
        self.model_dir = model_dir
        counts = torch.bincount(train.y, minlength=head.linear.out_features).float()
        # Class-balanced: each class weighs the same in the loss whatever its image count.
        self.class_weights = len(train.y) / (len(counts) * counts.clamp_min(1.0))
        self.optimizer = torch.optim.AdamW(
            head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(self.train.y))
        total, seen = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start : start + self.config.batch_size]
            loss = F.cross_entropy(
                self.model(self.train.x[rows]),
                self.train.y[rows],
                weight=self.class_weights,
                label_smoothing=self.config.label_smoothing,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(rows)
            seen += len(rows)
        return {"train_loss": total / max(seen, 1)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        logits = self.model(self.val.x)
        loss = F.cross_entropy(logits, self.val.y, weight=self.class_weights)
        predicted = logits.argmax(dim=1)
        return {
            "val_loss": float(loss),
            "val_accuracy": float((predicted == self.val.y).float().mean()),
        }

    def save_best(self, record: dict[str, Any]) -> None:
        self.classifier.save_pretrained(self.model_dir, {"epoch": record["epoch"]})

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None
