"""Train model 1: the head on cached pooled features of clean and scan-augmented views.

Steps: read the labelled sources and split them (test: sources held out by group; validation:
a random share of the rest), add drawn charts, diagrams and pages to training, cache the
backbone's pooled features of each training image under ``views`` scan-like augmentations plus
the clean image, and of each validation and test image clean and with Gaussian noise; train
the head with class-balanced cross-entropy on the shared epoch loop (early stopping on the
validation loss, resume, TensorBoard); fit a temperature on validation; report validation and
test figures (``report.json``); save the model folder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.data.drawn_kinds import write_supplements
from captioner.data.labelled import (
    LabelledImage,
    LabelledSet,
    assign_splits,
    read_sources,
)
from captioner.doctype.augment import NoiseView, ScanAugment
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.features import (
    ViewFeatures,
    extract_view,
    pooled_backbone,
    resolve_style_blocks,
)
from captioner.doctype.metrics import classification_metrics, fit_temperature
from captioner.doctype.model import DocTypeConfig, DocTypeHead
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json, load_state
from captioner.runlog import say
from captioner.training.checkpoint import check_resume
from captioner.training.classifier_config import MAY_CHANGE, ClassifierTrainConfig
from captioner.training.classifier_finetune import (
    PrefixRows,
    TunedClassifier,
    cache_prefix_maps,
    pooled_of,
    prefix_rows,
    train_top_blocks,
    validation_figures,
    weighted_step,
)
from captioner.training.loop import EpochTools, LoopSettings, fit
from captioner.vision.backbones import Backbone, load_backbone


@dataclass
class ClassifierTrainResult:
    model_dir: Path
    best_epoch: int
    epochs_run: int
    stopped: str
    temperature: float
    reports: dict[str, dict[str, dict[str, Any]]]  # split -> condition -> figures
    seconds: float
    data: LabelledSet


@dataclass
class _Features:
    x: torch.Tensor  # [N, C]
    y: torch.Tensor  # [N]
    groups: list[str]  # the source of each row


def train_classifier(config: ClassifierTrainConfig, resume: bool = False) -> ClassifierTrainResult:
    started = time.perf_counter()
    out = Path(config.out)
    check_resume(out, resume, "a classifier training run")
    data = _labelled_data(config, out, resume)
    backbone = load_backbone(config.backbone, config.weights, config.image_size)
    style_blocks = resolve_style_blocks(config.style_blocks, backbone)
    pooled = pooled_backbone(backbone, style_blocks)
    classes = data.classes
    if not data.split("train") or not data.split("val"):
        raise CaptionerError(
            f"{', '.join(config.data)}: the split left no training or no validation images"
        )
    feats = Path(config.features) if config.features else out / "features"
    # The pooled-only caches stay where they were; those with style statistics beside them.
    view_folder = feats / ("style-" + "-".join(map(str, style_blocks))) if style_blocks else feats
    noisy_name = f"noise_{config.noise_sigma:g}"
    # Views depend on the image only (never on the run's seed), so runs with other seeds or
    # splits over the same images share one --features folder.
    transforms: dict[str, Any] = {"clean": None, noisy_name: NoiseView(config.noise_sigma)}
    transforms.update({f"aug{v}": ScanAugment(view=v) for v in range(config.views)})
    split_of = np.asarray([item.split for item in data.images])
    labels = np.asarray([classes.index(item.label) for item in data.images], dtype=np.int64)
    groups = np.asarray([item.group for item in data.images])
    cached = {
        name: _view(data.images, view_folder, pooled, name, t, config, style_blocks)
        for name, t in transforms.items()
    }

    def rows(split: str, view: str) -> _Features:
        keep = (split_of == split) & cached[view].ok
        return _Features(
            torch.from_numpy(cached[view].features[keep]),
            torch.from_numpy(labels[keep]),
            groups[keep].tolist(),
        )

    train = _stack([rows("train", v) for v in ["clean", *(f"aug{i}" for i in range(config.views))]])
    evaluated = {
        split: {"clean": rows(split, "clean"), noisy_name: rows(split, noisy_name)}
        for split in ("val", "test")
        if data.split(split)
    }
    val = evaluated["val"]
    if len(train.y) == 0 or len(val["clean"].y) == 0:
        raise CaptionerError("no readable training or validation image")

    # Seeded here, after the features: extracting them (DataLoader workers draw seeds) or
    # finding them cached must not change the training.
    torch.manual_seed(config.seed)
    extra = pooled.channels - backbone.channels
    head = DocTypeHead(backbone.channels, len(classes), config.dropout, extra)
    head.set_standardisation(train.x)
    photo_class = config.photo_class if config.photo_class in classes else None
    if photo_class is None:
        say(config.progress, f"note: no {config.photo_class!r} class; no photo decision")
    model_config = DocTypeConfig(
        classes=classes,
        backbone=backbone.name,
        backbone_weights_id=backbone.weights_id,
        channels=backbone.channels,
        image_size=config.image_size,
        style_blocks=style_blocks,
        style_channels=extra,
        dropout=config.dropout,
        photo_class=photo_class,
        photo_threshold=config.photo_threshold,
    )
    task = _HeadTask(
        head,
        train,
        _stack(list(val.values())),
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
    if config.fine_tune_blocks:
        evaluated = _fine_tune(
            config, backbone, head, model_config, data, (split_of, labels, groups), feats,
            transforms, cached, evaluated, resume,
        )  # fmt: skip
        val = evaluated["val"]
    head.eval()
    calibration = _stack(list(val.values()))
    with torch.no_grad():
        model_config.temperature = fit_temperature(
            head(calibration.x).numpy(), calibration.y.numpy()
        )
    classifier = DocTypeClassifier(
        head, model_config, backbone if config.fine_tune_blocks else None
    )
    reports = {
        split: {
            condition: classification_metrics(
                part.y.numpy(),
                classifier.probabilities_of_pooled(part.x).numpy(),
                classes,
                config.photo_class,
                config.photo_threshold,
                groups=part.groups,
            )
            for condition, part in parts.items()
        }
        for split, parts in evaluated.items()
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
        "reports": reports,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if config.fine_tune_blocks:
        info["fine_tuned_blocks"] = config.fine_tune_blocks
    classifier.save_pretrained(out / "model", info, with_backbone=bool(config.fine_tune_blocks))
    atomic_write_json(out / "report.json", reports)
    return ClassifierTrainResult(
        model_dir=out / "model",
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped=result.stopped,
        temperature=model_config.temperature,
        reports=reports,
        seconds=time.perf_counter() - started,
        data=data,
    )


def _fine_tune(
    config: ClassifierTrainConfig,
    backbone: Backbone,
    head: DocTypeHead,
    model_config: DocTypeConfig,
    data: LabelledSet,
    columns: tuple[np.ndarray, np.ndarray, np.ndarray],
    feats: Path,
    transforms: dict[str, Any],
    cached: dict[str, ViewFeatures],
    evaluated: dict[str, dict[str, _Features]],
    resume: bool,
) -> dict[str, dict[str, _Features]]:
    """The second phase: the last blocks with the head; returns the validation and test
    features again, through the fine-tuned blocks. ``columns``: the split, class index and
    source of each of ``data.images``; ``cached``: the first phase's features per view, whose
    style statistics of blocks before the cut the tuned blocks do not change."""
    from captioner.doctype.features import style_channels
    from captioner.vision.blocks import split_backbone, trunk_blocks

    cut = len(trunk_blocks(backbone.trunk)) - config.fine_tune_blocks
    blocks = model_config.style_blocks
    start = backbone.channels
    width = style_channels(backbone, [b for b in blocks if b < cut])

    def styles(views: list[str]) -> list[np.ndarray] | None:
        if not blocks:
            return None
        return [cached[v].features[:, start : start + width] for v in views]

    prefix, top = split_backbone(backbone, config.fine_tune_blocks)
    top.requires_grad_(True)
    folder = feats / f"top{config.fine_tune_blocks}"
    split_of, labels, groups = columns
    noisy = next(name for name in transforms if name.startswith("noise_"))
    train_views = ["clean", *(f"aug{i}" for i in range(min(config.fine_tune_views, config.views)))]

    caches = {
        name: cache_prefix_maps(data.images, name, transforms[name], folder, prefix, config)
        for name in [*train_views, noisy]
    }

    def rows(views: list[str], split: str) -> PrefixRows:
        return prefix_rows(
            [caches[v] for v in views], split_of == split, labels, groups, styles(views)
        )

    train = rows(train_views, "train")
    evaluated_rows = {
        split: {condition: rows([condition], split) for condition in ("clean", noisy)}
        for split in evaluated
    }
    val_all = rows(["clean", noisy], "val")
    weights = sample_weights(train.y, train.groups, len(data.classes), config.balance)
    classifier = DocTypeClassifier(head, model_config, backbone)
    grid = (int(prefix.grid[0]), int(prefix.grid[1]))
    top_taps = [b - cut for b in blocks if b >= cut]
    model = train_top_blocks(
        TunedClassifier(top, head, grid, top_taps),
        classifier,
        train,
        val_all,
        weights,
        config,
        resume,
    )
    return {
        split: {
            condition: _Features(pooled_of(model, part), part.y, part.groups)
            for condition, part in parts.items()
        }
        for split, parts in evaluated_rows.items()
    }


def _labelled_data(config: ClassifierTrainConfig, out: Path, resume: bool) -> LabelledSet:
    """The run's images and split: read and split once, reused as they are on resume."""
    path = out / "data.json"
    if resume and path.is_file():
        return LabelledSet.load(path)
    if not config.data:
        raise CaptionerError("no --data given (class folders, LABEL=DIR, or a CSV/JSONL file)")
    data = read_sources(  # the sample per source is the same for every seed (shared features)
        config.data, group_pattern=config.group_pattern, max_per_group=config.max_per_group
    )
    assign_splits(
        data,
        by=config.split_by,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    if config.synthetic > 0:
        drawn_dir = (Path(config.features) if config.features else out / "features") / "drawn"
        drawn = write_supplements(drawn_dir, config.synthetic, data.classes)
        data.images += [LabelledImage(p.resolve().as_posix(), c, "synth") for p, c in drawn]
        data.split_info["synthetic_training_images"] = len(drawn)
    out.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data


def _view(
    items: list[LabelledImage],
    folder: Path,
    pooled: Backbone,
    name: str,
    transform: Any,
    config: ClassifierTrainConfig,
    style_blocks: list[int],
) -> ViewFeatures:
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
        style_blocks=style_blocks,
    )
    for key, problem in list(view.failed.items())[:5]:
        say(config.progress, f"skipped {key}: {problem}")
    if len(view.failed) > 5:
        say(config.progress, f"... and {len(view.failed) - 5} more unreadable images ({name})")
    return view


def _stack(parts: list[_Features]) -> _Features:
    return _Features(
        torch.cat([p.x for p in parts]),
        torch.cat([p.y for p in parts]),
        [g for p in parts for g in p.groups],
    )


def sample_weights(
    labels: torch.Tensor, groups: list[str], classes: int, balance: str
) -> torch.Tensor:
    """Loss weight of each training row, mean 1. ``"class"``: every class weighs the same
    whatever its image count; ``"source"``: so does every source (group) inside its class, so
    that one large source does not decide what a class looks like."""
    if balance not in ("class", "source"):
        raise CaptionerError(f"balance must be 'class' or 'source', not {balance!r}")
    weights = torch.zeros(len(labels))
    for c in range(classes):
        in_class = labels == c
        if not in_class.any():
            continue
        units = sorted({g for g, keep in zip(groups, in_class.tolist(), strict=True) if keep})
        if balance == "class":
            weights[in_class] = 1.0 / int(in_class.sum())
            continue
        for unit in units:
            rows = in_class & torch.tensor([g == unit for g in groups])
            weights[rows] = 1.0 / (len(units) * int(rows.sum()))
    return weights * len(labels) / weights.sum()


class _HeadTask:
    """The classifier head as a task of the shared loop."""

    monitor = "val_nll"
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
        self.weights = sample_weights(
            train.y, train.groups, head.linear.out_features, config.balance
        )
        self.optimizer = torch.optim.AdamW(
            head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = None
        self.device = torch.device("cpu")

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(self.train.y))
        total, seen = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start : start + self.config.batch_size]
            logits = self.model(self.train.x[rows])
            loss = weighted_step(
                logits, self.train.y[rows], self.weights[rows], self.optimizer, self.config
            )
            total += loss * len(rows)
            seen += len(rows)
        return {"train_loss": total / max(seen, 1)}

    @torch.no_grad()
    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        self.model.eval()
        return validation_figures(self.model(self.val.x), self.val.y)

    def end_epoch(self, row: dict[str, Any]) -> None:
        return None

    def save_best(self, record: dict[str, Any]) -> None:
        self.classifier.save_pretrained(self.model_dir, {"epoch": record["epoch"]})

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None
