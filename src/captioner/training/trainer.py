"""The training loop: teacher forcing on cached features, real validation, early stopping.

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
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from captioner import runlog
from captioner.data.manifest import Manifest
from captioner.data.vocabulary import Vocabulary
from captioner.features.cache import FeatureCache
from captioner.fileio import atomic_write_json, load_state
from captioner.model.captioner import (
    Captioner,
    DecodeSettings,
    check_backbone_matches,
)
from captioner.model.config import ModelConfig
from captioner.model.decoder import ShowAttendTell
from captioner.runtime import distributed, resolve_device, seed_everything
from captioner.runtime.distributed import DistContext
from captioner.training.checkpoint import (
    check_resume,
    check_resumed_settings,
    load_training_state,
    save_training_state,
)
from captioner.training.config import TrainConfig
from captioner.training.data import (
    CaptionFeatureDataset,
    ShardSampler,
    collate_captions,
    pair_captions,
)
from captioner.training.early_stopping import EarlyStopping
from captioner.training.precision import CompiledForward, Precision
from captioner.training.steps import evaluate_loss, train_epoch

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
    check_resume(Path(config.out), resume, "a training run")
    if resume:
        check_resumed_settings(
            Path(config.out) / "train_config.json",
            config.to_dict(),
            RESUME_MAY_CHANGE,
            "a training run",
        )
    seed_everything(config.seed)
    ctx, device = distributed.setup(resolve_device(config.device))
    try:
        return _train(config, resume, ctx, device)
    finally:
        distributed.teardown(ctx)


def _train(
    config: TrainConfig, resume: bool, ctx: DistContext, device: torch.device
) -> TrainResult:
    run_dir = Path(config.out)
    state_dir = run_dir / "checkpoint"
    main = ctx.is_main
    say = partial(runlog.say, config.progress) if main else _silent
    precision = Precision(config.precision, device)
    manifest = Manifest.load(Path(config.manifest))
    features_dir = Path(config.features)
    train_cache = FeatureCache.open(features_dir / "train")
    val_cache = FeatureCache.open(features_dir / "val", expected=train_cache.header)

    vocab_path = run_dir / "vocab.json"
    if resume:
        vocab = Vocabulary.load(vocab_path)
        if main:  # the record follows what may change (a longer run, another device)
            atomic_write_json(run_dir / "train_config.json", config.to_dict())
    else:
        train_captions = [c for r in manifest.split("train") for c in r.captions]
        vocab = Vocabulary.build(train_captions, config.vocab_size, config.min_word_count)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            vocab.save(vocab_path)
            atomic_write_json(run_dir / "train_config.json", config.to_dict())

    train_data = pair_captions(
        train_cache, manifest.split("train"), vocab, config.max_caption_length
    )
    val_data = pair_captions(val_cache, manifest.split("val"), vocab, config.max_caption_length)
    channels, regions = (
        int(train_cache.header["channels"]),
        int(np.prod(train_cache.header["grid"])),
    )
    model_config = ModelConfig(
        vocab_size=len(vocab),
        feature_channels=channels,
        num_regions=regions,
        encoder_dim=config.encoder_dim,
        embed_dim=config.embed_dim,
        attention_dim=config.attention_dim,
        hidden_dim=config.hidden_dim,
        dropout=config.dropout,
        init_hidden=config.init_hidden,
        position_embedding=config.position_embedding,
    )
    model = ShowAttendTell(model_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
        if config.lr_schedule == "plateau"
        else None
    )
    stopper = EarlyStopping(
        config.patience, config.min_delta, mode="min" if config.select_on == "val_loss" else "max"
    )
    history: list[dict[str, Any]] = []
    start_epoch, global_step = 1, 0
    if resume:
        progress = load_training_state(state_dir, model, optimizer, scheduler)
        stopper.load_state_dict(progress["early_stopping"])
        history = progress["history"]
        start_epoch, global_step = progress["epoch"] + 1, progress["global_step"]
        precision.load_state_dict(progress.get("grad_scaler"))
    forward = distributed.wrap_model(model, ctx, device)
    if config.compile:
        forward = CompiledForward(forward, say)
    else:
        # Same loss and gradients, without the steps after each caption's end (a compiled
        # forward keeps the padded steps: the packing's data-dependent shapes break its graph).
        forward = functools.partial(forward, skip_padding=True)

    backbone_header = {
        k: train_cache.header[k]
        for k in ("backbone", "weights_id", "preprocessing", "grid", "channels")
    }
    check_backbone_matches(val_cache.header, backbone_header)
    train_loader = _loader(train_cache, train_data, config, True, ctx)
    val_loader = _loader(val_cache, val_data, config, False, ctx)
    writer = runlog.tensorboard_writer(run_dir / "tensorboard") if main else None
    ranks = f" x {ctx.world_size} processes" if ctx.enabled else ""
    say(
        f"train: {len(train_data.rows)} captions of {len(set(train_data.rows))} images; "
        f"val: {len(val_data.rows)} captions; vocabulary {len(vocab)}; device {device}{ranks}"
        f"{'' if config.precision == 'fp32' else ', ' + config.precision}"
    )
    for name, data in (("train", train_data), ("val", val_data)):
        if data.images_without_features:
            say(
                f"{name}: {len(data.images_without_features)} images skipped "
                f"(no features, e.g. {data.images_without_features[:3]})",
            )

    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        if stopper.should_stop:
            break
        started = time.perf_counter()
        if ctx.enabled:
            train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            # Per rank and epoch, so dropout differs across ranks and resume is exact.
            torch.manual_seed((config.seed * 1000 + epoch) * 1009 + ctx.rank)
        else:
            train_loader.generator.manual_seed(config.seed * 1000 + epoch)  # type: ignore[union-attr]
        train_loss, global_step = train_epoch(
            forward,
            model,
            train_loader,
            optimizer,
            config,
            device,
            epoch,
            global_step,
            writer,
            precision,
            ctx,
        )
        val_loss = evaluate_loss(model, val_loader, device, precision, ctx)
        seconds = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            "seconds": round(seconds, 2),
            "captions_per_s": round(len(train_data.rows) / max(seconds, 1e-9), 1),
        }
        scores = {"val_loss": val_loss}
        if config.eval_every and epoch % config.eval_every == 0:
            # Decoded on rank 0 and broadcast: every rank takes the same early-stopping decision.
            metrics = (
                validation_metrics(model, vocab, backbone_header, manifest, config)
                if main
                else None
            )
            scores.update(distributed.broadcast_object(ctx, metrics))
            record.update(
                {f"val_{name}": value for name, value in scores.items() if name != "val_loss"}
            )
        history.append(record)
        if writer is not None:
            writer.add_scalar("loss/train", train_loss, epoch)
            writer.add_scalar("loss/val", val_loss, epoch)
            for name in ("BLEU-4", "CIDEr"):
                if name in scores:
                    writer.add_scalar(f"metric/val_{name}", scores[name], epoch)
            writer.add_scalar("lr", lr, epoch)
            writer.flush()
        improved = False
        if config.select_on in scores:
            improved = stopper.update(scores[config.select_on], epoch)
        if improved and main:
            info = {
                "epoch": epoch,
                "val_loss": val_loss,
                "val_scores": scores,
                "select_on": config.select_on,
                "manifest": str(config.manifest),
                "train_images": len(set(train_data.rows)),
                "source": manifest.source,
                # "denoiser-<sha>" when the features were extracted from denoised images
                "image_transform": train_cache.header.get("image_transform"),
            }
            Captioner(model, vocab, backbone_header, info).save_pretrained(run_dir / "model")
        if scheduler is not None:
            scheduler.step(val_loss)
        progress = {
            "epoch": epoch,
            "global_step": global_step,
            "history": history,
            "early_stopping": stopper.state_dict(),
        }
        if precision.scaler is not None:
            progress["grad_scaler"] = precision.state_dict()
        if main:
            save_training_state(state_dir, model, optimizer, scheduler, progress)
            atomic_write_json(run_dir / "history.json", history)
            _plot(history, run_dir / "loss_curve.png")
        metric_text = "".join(
            f", val {name} {value:.1f}" for name, value in scores.items() if name != "val_loss"
        )
        say(
            f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}{metric_text}"
            f"{' (best)' if improved else ''}, {seconds:.1f}s, lr {lr:.2e}",
        )
    if writer is not None:
        writer.close()
    distributed.barrier(ctx)  # rank 0 has written the best model
    # Early stopping restores the best weights: the exported model is the best epoch's.
    load_state(model, run_dir / "model" / "model.safetensors")
    return TrainResult(
        run_dir=run_dir,
        model_dir=run_dir / "model",
        best_epoch=stopper.best_epoch,
        best_score=float(stopper.best) if stopper.best is not None else math.nan,
        select_on=config.select_on,
        epochs_run=len(history),
        history=history,
        stopped_early=stopper.should_stop,
    )


def validation_metrics(
    model: ShowAttendTell,
    vocab: Vocabulary,
    backbone_header: dict[str, Any],
    manifest: Manifest,
    config: TrainConfig,
) -> dict[str, float]:
    """BLEU-4 and CIDEr of real decoding (not teacher forcing) on the validation split."""
    from captioner.evaluation import selection_scores

    decode = DecodeSettings(beam_size=config.eval_beam_size, max_length=config.max_caption_length)
    captioner = Captioner(model, vocab, backbone_header)
    return selection_scores(captioner, manifest, Path(config.features), "val", decode)


def _loader(
    cache: FeatureCache, data: Any, config: TrainConfig, shuffle: bool, ctx: DistContext
) -> DataLoader:
    dataset = CaptionFeatureDataset(cache, data)
    sampler: Any = None
    if ctx.enabled:  # shuffled and evened out by DistributedSampler; validation: exact shards
        sampler = (
            DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed)
            if shuffle
            else ShardSampler(len(dataset), ctx.rank, ctx.world_size)
        )
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


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    from captioner.viz import plot_loss_curve

    plot_loss_curve(history, path)


def _silent(message: str) -> None:
    """Printing on ranks other than 0."""
