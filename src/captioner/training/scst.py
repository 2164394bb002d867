"""Self-critical sequence training (Rennie et al. 2017): fine-tune a trained captioner on CIDEr-D.

For each training image the model samples ``samples`` captions; each caption's reward is its
CIDEr-D against the image's references (idf from the whole training split) and its baseline is
the mean reward of the other samples of the same image (the leave-one-out baseline of later
SCST implementations, which needs no extra greedy decode). The loss is
``-(reward - baseline) * log p(caption)`` averaged over the sampled words.

It runs as a task of the shared loop (training/loop.py). A run folder holds
``scst_config.json``, ``model/`` (best on the validation metric, selected on val only; epoch 0
is the starting model), ``checkpoint/`` (last epoch, for ``--resume``), ``history.json`` and
``tensorboard/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.caption.captioner import Captioner, check_backbone_matches
from captioner.caption.decode_settings import DecodeSettings
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import sample_with_log_probs
from captioner.data.manifest import Manifest
from captioner.data.text import tokenize
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.runtime import resolve_device, seed_everything
from captioner.training.cider_reward import CiderD
from captioner.training.loop import EpochTools, LoopSettings, check_start, fit
from captioner.training.scst_config import ScstConfig


@dataclass
class ScstResult:
    model_dir: Path
    best_epoch: int  # 0: no epoch beat the starting model, which was kept
    best_score: float
    history: list[dict[str, Any]]


def leave_one_out_advantage(rewards: torch.Tensor, samples: int) -> torch.Tensor:
    """rewards [B*samples] -> reward minus the mean of the image's other samples."""
    grouped = rewards.view(-1, samples)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (samples - 1)
    return (grouped - baseline).view(-1)


# Settings a resumed SCST run may change (paths, device, display, how long it goes on).
RESUME_MAY_CHANGE = {"manifest", "features", "out", "epochs", "patience", "device", "progress"}


def finetune(config: ScstConfig, resume: bool = False) -> ScstResult:
    run_dir = Path(config.out)
    settings = LoopSettings(
        epochs=config.epochs,
        patience=config.patience,
        progress=config.progress,
        name="SCST",
        score_start=True,  # epoch 0: the cross-entropy model, kept unless an epoch beats it
        settings_file="scst_config.json",
    )
    record = asdict(config)
    check_start(run_dir, settings, record, RESUME_MAY_CHANGE, resume)
    seed_everything(config.seed)
    task = ScstTask(config, resolve_device(config.device))
    result = fit(
        task, run_dir, settings, record=record, may_change=RESUME_MAY_CHANGE, resume=resume
    )
    return ScstResult(run_dir / "model", result.best_epoch, result.best_score, result.history)


class ScstTask:
    """Self-critical fine-tuning of a trained captioner on CIDEr-D of its own samples."""

    scheduler = None
    mode = "max"

    def __init__(self, config: ScstConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.start = Captioner.from_pretrained(config.model, device=device, backbone_weights=None)
        if not isinstance(self.start.model, ShowAttendTell):
            raise CaptionerError(f"{config.model}: SCST fine-tunes one model, not an ensemble")
        self.model: ShowAttendTell = self.start.model
        self.vocab = self.start.vocab
        self.manifest = Manifest.load(Path(config.manifest))
        self.cache = FeatureCache.open(Path(config.features) / "train")
        check_backbone_matches(self.cache.header, self.start.backbone_header)
        images, self.rows = _training_images(self.manifest, self.cache)
        self.reward = CiderD({key: [tokenize(c) for c in captions] for key, captions in images})
        self.keys = [key for key, _ in images]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.monitor = f"val_{config.select_on}"

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        model, config, vocab = self.model, self.config, self.vocab
        order = torch.randperm(
            len(self.keys), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        ).tolist()
        model.train()
        total, count = 0.0, 0
        bar = tools.bar(range(0, len(order), config.batch_images), desc=f"scst {epoch}")
        for begin in bar:
            batch_keys = [self.keys[i] for i in order[begin : begin + config.batch_images]]
            feats = np.stack(
                [
                    np.asarray(self.cache.features(self.rows[k]), dtype=np.float32)
                    for k in batch_keys
                ]
            )
            with tools.precision.autocast():
                sampled = sample_with_log_probs(
                    model,
                    torch.from_numpy(feats).to(self.device),
                    config.samples,
                    config.max_length,
                )
            rewards = torch.tensor(
                [
                    self.reward.score(batch_keys[i // config.samples], vocab.decode(seq))
                    for i, seq in enumerate(sampled.token_ids.cpu().tolist())
                ],
                device=self.device,
            )
            advantage = leave_one_out_advantage(rewards, config.samples)
            counted = sampled.log_probs * sampled.mask
            loss = -(advantage.unsqueeze(1) * counted).sum() / sampled.mask.sum()
            self.optimizer.zero_grad(set_to_none=True)
            tools.precision.backward_and_step(
                loss, self.optimizer, model.parameters, config.grad_clip
            )
            total += float(rewards.sum())
            count += rewards.numel()
            bar.set_postfix(reward=f"{total / count:.3f}")
        return {"train_reward": total / max(count, 1)}

    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        from captioner.evaluation.split import selection_scores

        config = self.config
        decode = DecodeSettings(beam_size=config.eval_beam_size, max_length=config.max_length)
        captioner = Captioner(self.model, self.vocab, self.start.backbone_header)
        scores = selection_scores(captioner, self.manifest, Path(config.features), "val", decode)
        return {f"val_{name}": value for name, value in scores.items()}

    def end_epoch(self, row: dict[str, Any]) -> None:
        return None

    def save_best(self, row: dict[str, Any]) -> None:
        scores = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        info = dict(self.start.info)
        info.update(
            {
                "scst": {
                    "epoch": row["epoch"],
                    "from": str(self.config.model),
                    "val_scores": scores,
                },
                "select_on": self.config.select_on,
            }
        )
        Captioner(self.model, self.vocab, self.start.backbone_header, info).save_pretrained(
            Path(self.config.out) / "model", backbone_from=Path(self.config.model)
        )

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


def _training_images(
    manifest: Manifest, cache: FeatureCache
) -> tuple[list[tuple[str, list[str]]], dict[str, int]]:
    valid = set(int(i) for i in cache.valid_indices())
    images, rows = [], {}
    for record in manifest.split("train"):
        try:
            row = cache.index_of(record.file)
        except CaptionerError:  # not in this cache
            continue
        captions = [c for c in record.captions if tokenize(c)]
        if row in valid and captions:
            images.append((record.file, captions))
            rows[record.file] = row
    if not images:
        raise CaptionerError("no training image has both features and captions")
    return images, rows
