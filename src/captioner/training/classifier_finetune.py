"""Model 1's optional second phase: the backbone's last blocks fine-tuned with the head.

After the head is trained on cached pooled features (training/classifier.py), the images'
maps before the backbone's last ``fine_tune_blocks`` blocks are cached per view (clean and
scan-augmented for training; clean and noisy for validation and test; shared by every seed,
like the pooled caches), and those blocks train together with the head, starting from it:
their own learning rate, batch-norm statistics frozen, the same class/source-balanced loss,
early stopping on the calibrated validation NLL, resume. The model folder then carries the
fine-tuned trunk (doctype/classifier.py). A head that reads style statistics gets those of the
blocks before the cut from the first phase's caches (the frozen prefix makes them) and those of
the tuned blocks from the tuned blocks themselves, on the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captioner.data.labelled import LabelledImage
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.features import StyleTaps, describe
from captioner.doctype.metrics import fit_temperature
from captioner.doctype.model import DocTypeHead
from captioner.features.cache import OK, FeatureCache
from captioner.features.extract import extract_split
from captioner.runlog import say
from captioner.training.classifier_config import MAY_CHANGE, ClassifierTrainConfig
from captioner.training.loop import EpochTools, LoopSettings, fit
from captioner.vision.backbones import Backbone
from captioner.vision.blocks import grid_of_prefix, split_backbone


class TunedClassifier(nn.Module):
    """Cached prefix maps -> the top blocks -> pooled features (then the prefix's cached style
    statistics and those of ``top_taps``, indices into ``top``) -> the head's logits."""

    def __init__(
        self,
        top: nn.Sequential,
        head: DocTypeHead,
        grid: tuple[int, int],
        top_taps: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.top, self.head, self.grid = top, head, grid
        self.top_taps = list(top_taps)

    def train(self, mode: bool = True) -> TunedClassifier:
        super().train(mode)
        self.top.eval()  # frozen batch-norm statistics
        return self

    def pooled(
        self, prefix: torch.Tensor, prefix_style: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the head reads (``doctype.features.describe``); the style blocks are in
        ascending order, so the prefix's statistics come before the top blocks'."""
        with StyleTaps(self.top, self.top_taps) as taps:
            grid = grid_of_prefix(self.top, prefix, self.grid)
        parts = [t for t in (prefix_style, taps.take()) if t is not None]
        return describe(grid, torch.cat(parts, dim=1) if parts else None)

    def forward(
        self, prefix: torch.Tensor, prefix_style: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.pooled(prefix, prefix_style))


@dataclass
class PrefixRows:
    """Examples read from per-view caches of prefix maps: ``picks[i]`` = (view, row);
    ``styles[view]``: the style statistics of the prefix's blocks per image, if the head reads
    any."""

    caches: list[FeatureCache]
    picks: list[tuple[int, int]]
    y: torch.Tensor
    groups: list[str]
    styles: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.picks)

    def maps(self, which: Sequence[int]) -> torch.Tensor:
        rows = [self.caches[v].features(r) for v, r in (self.picks[i] for i in which)]
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    def batch(self, which: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The maps of examples ``which`` and their prefix style statistics (or None)."""
        style = None
        if self.styles is not None:
            picked = [self.styles[v][r] for v, r in (self.picks[i] for i in which)]
            style = torch.from_numpy(np.stack(picked).astype(np.float32))
        return self.maps(which), style


def cache_prefix_maps(
    items: list[LabelledImage],
    name: str,
    transform: Callable[[Any], Any] | None,
    folder: Path,
    prefix: Backbone,
    config: ClassifierTrainConfig,
) -> FeatureCache:
    """Prefix maps of every image under one view (cached, resumable; like the pooled caches,
    of all images whatever the split, so runs with other seeds share them)."""
    extract_split(
        [(item.path, Path(item.path)) for item in items],
        folder / name,
        prefix,
        batch_size=config.extract_batch_size,
        num_workers=config.workers,
        device=config.device,
        image_transform=transform,
        progress=config.progress,
        extra_header={"image_transform": repr(transform)},
    )
    return FeatureCache.open(folder / name)


def prefix_rows(
    caches: list[FeatureCache],
    keep: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    styles: list[np.ndarray] | None = None,
) -> PrefixRows:
    """The examples of the images where ``keep``, under each of ``caches`` (failed images
    left out); ``styles``: each view's prefix style statistics per image (NaN: failed)."""
    picks, y, where = [], [], []
    for number, cache in enumerate(caches):
        ok = keep & (cache.status == OK)
        if styles is not None:
            ok &= ~np.isnan(styles[number]).any(axis=1)
        for row in np.flatnonzero(ok).tolist():
            picks.append((number, row))
            y.append(int(labels[row]))
            where.append(str(groups[row]))
    return PrefixRows(list(caches), picks, torch.tensor(y, dtype=torch.long), where, styles)


def pooled_of(model: TunedClassifier, rows: PrefixRows, batch: int = 128) -> torch.Tensor:
    """What the head reads of every example, through the (fine-tuned) top blocks."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            out.append(model.pooled(*rows.batch(range(start, min(start + batch, len(rows))))))
    return torch.cat(out)


def weighted_step(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: ClassifierTrainConfig,
) -> float:
    """One optimizer step on the weighted, label-smoothed cross-entropy; returns the loss."""
    losses = F.cross_entropy(
        logits, labels, reduction="none", label_smoothing=config.label_smoothing
    )
    loss = (losses * weights).sum() / weights.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def validation_figures(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Calibrated NLL (the selection metric: the raw NLL grows with overconfidence long before
    the ranking of the classes gets worse), raw NLL, accuracy, temperature."""
    temperature = fit_temperature(logits.numpy(), labels.numpy())
    return {
        "val_nll": float(F.cross_entropy(logits / temperature, labels)),
        "val_raw_nll": float(F.cross_entropy(logits, labels)),
        "val_accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
        "val_temperature": temperature,
    }


class TunedHeadTask:
    """The top blocks and the head as a task of the shared loop."""

    monitor = "val_nll"
    mode = "min"

    def __init__(
        self,
        model: TunedClassifier,
        train: PrefixRows,
        val: PrefixRows,
        weights: torch.Tensor,
        config: ClassifierTrainConfig,
        classifier: DocTypeClassifier,
        model_dir: Path,
    ) -> None:
        self.model, self.train, self.val, self.weights = model, train, val, weights
        self.config, self.classifier, self.model_dir = config, classifier, model_dir
        self.optimizer = torch.optim.AdamW(
            [
                {"params": model.head.parameters()},
                {"params": model.top.parameters(), "lr": config.backbone_learning_rate},
            ],
            lr=config.fine_tune_learning_rate,
            weight_decay=config.weight_decay,
        )
        self.scheduler = None
        self.device = torch.device("cpu")

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(self.train))
        size = self.config.fine_tune_batch_size
        total, seen = 0.0, 0
        for start in tools.bar(range(0, len(order), size), desc=f"fine-tune {epoch}"):
            rows = order[start : start + size]
            logits = self.model(*self.train.batch(rows.tolist()))
            loss = weighted_step(
                logits, self.train.y[rows], self.weights[rows], self.optimizer, self.config
            )
            total += loss * len(rows)
            seen += len(rows)
        return {"train_loss": total / max(seen, 1)}

    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        logits = self.model.head.eval()(pooled_of(self.model, self.val))
        return validation_figures(logits.detach(), self.val.y)

    def end_epoch(self, row: dict[str, Any]) -> None:
        return None

    def save_best(self, record: dict[str, Any]) -> None:
        info = {"epoch": record["epoch"], "fine_tuned_blocks": self.config.fine_tune_blocks}
        self.classifier.save_pretrained(self.model_dir, info, with_backbone=True)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


def train_top_blocks(
    model: TunedClassifier,
    classifier: DocTypeClassifier,
    train: PrefixRows,
    val: PrefixRows,
    weights: torch.Tensor,
    config: ClassifierTrainConfig,
    resume: bool,
) -> TunedClassifier:
    """Train the top blocks and the head (from the head of the first phase) in
    ``OUT/fine_tune``; returns ``model`` with the best epoch's weights (saved in OUT/model)."""
    out = Path(config.out)
    run_dir = out / "fine_tune"
    task = TunedHeadTask(model, train, val, weights, config, classifier, out / "model")
    say(
        config.progress,
        f"fine-tuning the backbone's last {config.fine_tune_blocks} blocks on {len(train)} "
        f"examples ({len(val)} for validation)",
    )
    settings = LoopSettings(
        config.fine_tune_epochs,
        config.patience,
        progress=config.progress,
        name="classifier fine-tuning",
    )
    fit(
        task,
        run_dir,
        settings,
        record=asdict(config),
        may_change=MAY_CHANGE,
        resume=resume and (run_dir / "checkpoint").exists(),
    )
    best = DocTypeClassifier.from_pretrained(out / "model")
    assert best.backbone is not None
    _, best_top = split_backbone(best.backbone, config.fine_tune_blocks)
    model.top.load_state_dict(best_top.state_dict())
    model.head.load_state_dict(best.head.state_dict())
    return model
