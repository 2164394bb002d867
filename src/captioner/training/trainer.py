"""Model 3's cross-entropy training as a task of the shared loop (training/loop.py): teacher
forcing on cached features, real validation, selection on the validation loss or a metric.

A run folder holds:
  train_config.json   the settings of the run
  vocab.json          vocabulary built from the training split only
  model/              the best model so far (``Captioner.save_pretrained`` format)
  checkpoint/         the last epoch's full state, for ``--resume``
  history.json, loss_curve.png, tensorboard/

Launched by ``torchrun``, every rank runs ``train``: the decoder is wrapped in
DistributedDataParallel, each rank reads its share of every batch (``batch_size`` is per rank),
losses are summed over the ranks, and only rank 0 writes files and prints.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from captioner import runlog
from captioner.caption.captioner import Captioner, check_backbone_matches
from captioner.caption.config import ModelConfig
from captioner.caption.decode_settings import DecodeSettings
from captioner.caption.decoder import ShowAttendTell
from captioner.data.manifest import Manifest
from captioner.data.vocabulary import Vocabulary
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.fileio import load_state
from captioner.runtime import distributed, resolve_device, seed_everything
from captioner.runtime.distributed import DistContext
from captioner.training.config import TrainConfig
from captioner.training.data import (
    CaptionFeatureDataset,
    ShardSampler,
    ViewSampler,
    collate_captions,
    pair_captions,
)
from captioner.training.finetune import (
    GridsOf,
    ImageBatches,
    PrefixPairs,
    TunedCaptionModel,
    collate_prefix_pairs,
    tuned_backbone,
)
from captioner.training.loop import EpochTools, LoopSettings, check_start, fit
from captioner.training.precision import CompiledForward, Precision
from captioner.training.steps import evaluate_loss, train_epoch
from captioner.vision.views import view_folder

__all__ = ["TrainResult", "evaluate_loss", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    best_epoch: int
    best_score: float  # of ``select_on`` at the best epoch
    select_on: str
    epochs_run: int
    history: list[dict[str, Any]]
    stopped_early: bool


# Settings a resumed run may change: where things are, how the run is shown, and how long it
# goes on; everything else (model, data handling, optimisation) must be as it started.
RESUME_MAY_CHANGE = {
    "manifest", "features", "out", "epochs", "patience", "device", "num_workers",
    "log_every", "progress", "precision", "compile", "tags",
}  # fmt: skip


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train a decoder on a prepared manifest and its extracted features."""
    run_dir = Path(config.out)
    settings = LoopSettings(
        epochs=config.epochs,
        patience=config.patience,
        min_delta=config.min_delta,
        progress=config.progress,
        name="training",
        precision=config.precision,
        loss_curve=True,
    )
    record = config.to_dict()
    check_start(run_dir, settings, record, RESUME_MAY_CHANGE, resume)
    seed_everything(config.seed)
    ctx, device = distributed.setup(resolve_device(config.device))
    try:
        Precision(config.precision, device)  # refuses e.g. fp16 on a CPU before any file
        if config.fine_tune_blocks and ctx.enabled:
            raise CaptionerError("fine-tuning under torchrun is not supported yet")
        task = CaptionTrainingTask(config, resume, ctx, device)
        result = fit(
            task,
            run_dir,
            settings,
            record=record,
            may_change=RESUME_MAY_CHANGE,
            resume=resume,
            ctx=ctx,
        )
        # Early stopping restores the best weights: the exported model is the best epoch's.
        load_state(task.decoder, run_dir / "model" / "model.safetensors")
        return TrainResult(
            run_dir=run_dir,
            model_dir=run_dir / "model",
            best_epoch=result.best_epoch,
            best_score=result.best_score,
            select_on=config.select_on,
            epochs_run=result.epochs_run,
            history=result.history,
            stopped_early=result.stopped == "early stop",
        )
    finally:
        distributed.teardown(ctx)


class CaptionTrainingTask:
    """Teacher-forced cross-entropy of the attention decoder on cached feature grids."""

    def __init__(
        self, config: TrainConfig, resume: bool, ctx: DistContext, device: torch.device
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.device = device
        run_dir = Path(config.out)
        main = ctx.is_main
        say = partial(runlog.say, config.progress) if main else _silent
        self.manifest = manifest = Manifest.load(Path(config.manifest))
        features_dir = Path(config.features)
        train_cache = FeatureCache.open(features_dir / "train")
        val_cache = FeatureCache.open(features_dir / "val", expected=train_cache.header)

        vocab_path = run_dir / "vocab.json"
        if resume:
            vocab = Vocabulary.load(vocab_path)
        else:
            train_captions = [c for r in manifest.split("train") for c in r.captions]
            vocab = Vocabulary.build(train_captions, config.vocab_size, config.min_word_count)
            if main:
                run_dir.mkdir(parents=True, exist_ok=True)
                vocab.save(vocab_path)
        self.vocab = vocab

        self.train_data = train_data = pair_captions(
            train_cache, manifest.split("train"), vocab, config.max_caption_length
        )
        val_data = pair_captions(val_cache, manifest.split("val"), vocab, config.max_caption_length)
        # What the caches hold: the final grids, or (fine-tuning) the maps before the last blocks
        self.cache_header = {
            k: train_cache.header[k]
            for k in ("backbone", "weights_id", "preprocessing", "grid", "channels", "top_blocks")
            if k in train_cache.header
        }
        check_backbone_matches(val_cache.header, self.cache_header)
        self.tuned: TunedCaptionModel | None = None
        if config.fine_tune_blocks:
            self.backbone, _, top = tuned_backbone(
                train_cache.header,
                config.fine_tune_blocks,
                config.backbone_weights,
                str(train_cache.folder),
            )
            self.backbone_header = {
                **self.backbone.header(),
                "fine_tuned_blocks": config.fine_tune_blocks,
            }
        elif "top_blocks" in self.cache_header:
            cut = self.cache_header["top_blocks"]
            raise CaptionerError(
                f"{train_cache.folder}: these are the maps before the backbone's last {cut} "
                f"blocks (`extract --top-blocks {cut}`): train on them with --fine-tune-blocks "
                f"{cut}, or extract the final grids"
            )
        else:
            self.backbone_header = self.cache_header
        model_config = ModelConfig.of(
            config.model,
            vocab_size=len(vocab),
            feature_channels=int(self.backbone_header["channels"]),
            num_regions=int(np.prod(self.backbone_header["grid"])),
        )
        self.decoder = decoder = ShowAttendTell(model_config)
        groups: list[dict[str, Any]] = [{"params": decoder.parameters()}]
        if config.fine_tune_blocks:
            grid = (int(train_cache.header["grid"][0]), int(train_cache.header["grid"][1]))
            self.tuned = TunedCaptionModel(top, decoder, grid)
            groups.append({"params": top.parameters(), "lr": config.backbone_learning_rate})
        self.model = model = (self.tuned or decoder).to(device)
        self.optimizer = torch.optim.Adam(
            groups, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5, patience=1)
            if config.lr_schedule == "plateau"
            else None
        )
        self.monitor = "val_loss" if config.select_on == "val_loss" else f"val_{config.select_on}"
        self.mode = "min" if config.select_on == "val_loss" else "max"
        self.global_step = 0

        forward: Any = distributed.wrap_model(model, ctx, device)
        if config.compile:
            forward = CompiledForward(forward, say)
        else:
            # Same loss and gradients, without the steps after each caption's end (a compiled
            # forward keeps the padded steps: the packing's data-dependent shapes break its
            # graph).
            forward = functools.partial(forward, skip_padding=True)
        self.forward = forward

        # "denoiser-<sha>" when the features were extracted from denoised images
        self.image_transform = train_cache.header.get("image_transform")
        views = [
            _view_cache(features_dir, view, train_cache, self.cache_header) for view in config.views
        ]
        if self.tuned is not None:
            self.val_grids: GridsOf | None = GridsOf(self.tuned, val_cache, device)
            self.train_loader = _image_loader([train_cache, *views], train_data, config, True)
            self.val_loader = _image_loader([val_cache], val_data, config, False)
        else:
            self.val_grids = None
            self.train_loader = _loader(train_cache, train_data, config, True, ctx, views)
            self.val_loader = _loader(val_cache, val_data, config, False, ctx)
        ranks = f" x {ctx.world_size} processes" if ctx.enabled else ""
        tuning = (
            f"; fine-tuning the backbone's last {config.fine_tune_blocks} blocks"
            if config.fine_tune_blocks
            else ""
        )
        say(
            f"train: {len(train_data.rows)} captions of {len(set(train_data.rows))} images; "
            f"val: {len(val_data.rows)} captions; vocabulary {len(vocab)}; device {device}"
            f"{ranks}{'' if config.precision == 'fp32' else ', ' + config.precision}{tuning}"
        )
        for name, data in (("train", train_data), ("val", val_data)):
            if data.images_without_features:
                say(
                    f"{name}: {len(data.images_without_features)} images skipped "
                    f"(no features, e.g. {data.images_without_features[:3]})",
                )

    def train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        config, ctx = self.config, self.ctx
        if self.tuned is not None:
            # decoder only for the first fine_tune_after epochs (no gradients: Adam skips them)
            self.tuned.top.requires_grad_(epoch > config.fine_tune_after)
            self.train_loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
            return self._train_epoch(epoch, tools)
        sampler = self.train_loader.sampler
        if isinstance(sampler, ViewSampler):
            sampler.set_epoch(epoch)
            sampler = sampler.base
        if ctx.enabled:
            sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            # Per rank and epoch, so dropout differs across ranks and resume is exact.
            torch.manual_seed((config.seed * 1000 + epoch) * 1009 + ctx.rank)
        else:
            generator = self.train_loader.generator or sampler.generator  # type: ignore[attr-defined]
            generator.manual_seed(config.seed * 1000 + epoch)
        return self._train_epoch(epoch, tools)

    def _train_epoch(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        config, ctx = self.config, self.ctx
        loss, self.global_step, rate = train_epoch(
            self.forward,
            self.model,
            self.train_loader,
            self.optimizer,
            config,
            self.device,
            epoch,
            self.global_step,
            tools,
            ctx,
        )
        return {"train_loss": loss, "captions_per_s": round(rate, 1)}

    def validate(self, epoch: int, tools: EpochTools) -> dict[str, float]:
        scores = {
            "val_loss": evaluate_loss(
                self.model, self.val_loader, self.device, tools.precision, self.ctx
            )
        }
        if self.config.eval_every and epoch % self.config.eval_every == 0:
            # Decoded on rank 0 and broadcast: every rank takes the same early-stopping decision.
            metrics = (
                validation_metrics(
                    self.decoder,
                    self.vocab,
                    self.backbone_header,
                    self.manifest,
                    self.config,
                    self.val_grids,
                )
                if self.ctx.is_main
                else None
            )
            metrics = distributed.broadcast_object(self.ctx, metrics)
            scores.update({f"val_{name}": value for name, value in metrics.items()})
        return scores

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.step(row["val_loss"])

    def save_best(self, row: dict[str, Any]) -> None:
        config = self.config
        info = {
            "epoch": row["epoch"],
            "val_loss": row["val_loss"],
            "val_scores": {
                "val_loss": row["val_loss"],
                **{k[4:]: row[k] for k in ("val_BLEU-4", "val_CIDEr") if k in row},
            },
            "select_on": config.select_on,
            "manifest": str(config.manifest),
            "train_images": len(set(self.train_data.rows)),
            "source": self.manifest.source,
            "image_transform": self.image_transform,
        }
        if self.tuned is None:
            Captioner(self.decoder, self.vocab, self.backbone_header, info).save_pretrained(
                Path(config.out) / "model"
            )
            return
        info["fine_tuned_blocks"] = config.fine_tune_blocks
        tuned = Captioner(self.decoder, self.vocab, self.backbone_header, info, self.backbone)
        tuned.save_pretrained(Path(config.out) / "model", with_backbone=True)

    def state(self) -> dict[str, Any]:
        return {"global_step": self.global_step}

    def load_state(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])


def validation_metrics(
    model: ShowAttendTell,
    vocab: Vocabulary,
    backbone_header: dict[str, Any],
    manifest: Manifest,
    config: TrainConfig,
    grids_of: GridsOf | None = None,
) -> dict[str, float]:
    """BLEU-4 and CIDEr of real decoding (not teacher forcing) on the validation split
    (``grids_of``: the grids of a backbone being fine-tuned, from its cached prefix maps)."""
    from captioner.evaluation.split import selection_scores

    decode = DecodeSettings(beam_size=config.eval_beam_size, max_length=config.max_caption_length)
    captioner = Captioner(model, vocab, backbone_header)
    return selection_scores(captioner, manifest, Path(config.features), "val", decode, grids_of)


def _loader(
    cache: FeatureCache,
    data: Any,
    config: TrainConfig,
    shuffle: bool,
    ctx: DistContext,
    views: list[FeatureCache] | None = None,
) -> DataLoader:
    dataset = CaptionFeatureDataset(cache, data, views or ())
    sampler: Any = None
    if ctx.enabled:  # shuffled and evened out by DistributedSampler; validation: exact shards
        sampler = (
            DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed)
            if shuffle
            else ShardSampler(len(dataset), ctx.rank, ctx.world_size)
        )
    if views:  # the shuffle as without views; a view drawn per pair and epoch on top
        base = (
            sampler if sampler is not None else RandomSampler(dataset, generator=torch.Generator())
        )
        sampler = ViewSampler(base, len(views), config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=partial(collate_captions, pad_to_multiple=8)
        if config.compile
        else collate_captions,
        generator=torch.Generator() if shuffle and sampler is None else None,
        persistent_workers=config.num_workers > 0,
    )


def _image_loader(
    caches: list[FeatureCache], data: Any, config: TrainConfig, shuffle: bool
) -> DataLoader:
    """Batches of whole images' prefix maps and captions (fine-tuning)."""
    batches = ImageBatches(
        data.rows,
        config.batch_size,
        len(caches) - 1,
        config.seed,
        shuffle,
        by_image=config.fine_tune_batches == "images" or not shuffle,  # val: order is moot
    )
    return DataLoader(
        PrefixPairs(caches, data),
        batch_sampler=batches,
        num_workers=config.num_workers,
        collate_fn=collate_prefix_pairs,
        persistent_workers=config.num_workers > 0,
    )


def _view_cache(
    features_dir: Path, view: str, plain: FeatureCache, backbone_header: dict[str, Any]
) -> FeatureCache:
    """The train split's cache under ``view``: same backbone, same images in the same rows."""
    folder = features_dir / view_folder("train", view)
    if not (folder / "header.json").is_file():
        raise CaptionerError(
            f"{folder}: no features of the {view!r} view; run `captioner extract --views "
            f"{view} ...` with the same --out first"
        )
    cache = FeatureCache.open(folder)
    check_backbone_matches(cache.header, backbone_header)
    if cache.keys != plain.keys or cache.header.get("view") != view:
        raise CaptionerError(f"{folder}: not the train split's images under the {view!r} view")
    return cache


def _silent(message: str) -> None:
    """Printing on ranks other than 0."""
