"""One teacher-forcing step, one training epoch and the validation loss, on one or many ranks.

With DistributedDataParallel every rank holds a slice of the global batch and DDP averages the
ranks' gradients. Each rank's token-averaged loss is therefore reweighted by its share of the
global tokens (and its share of the images for the attention regulariser), so the averaged
gradient is exactly the gradient of the global batch's loss: a DDP step over 2 ranks equals a
single-process step over the same batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from captioner.caption.decoder import TeacherForcingOutput
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import PAD_ID
from captioner.runtime import distributed
from captioner.runtime.distributed import DistContext
from captioner.training.config import TrainConfig
from captioner.training.loop import EpochTools
from captioner.training.precision import Precision

# (model inputs..., captions) -> output: (feature grids, captions) for a decoder on cached
# grids; (prefix maps, image index, captions) when fine-tuning (training/finetune.py)
Forward = Callable[..., TeacherForcingOutput]


def train_step(
    forward: Forward,
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    captions: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    precision: Precision,
    ctx: DistContext,
) -> tuple[float, int]:
    """One optimizer step; returns this rank's (token-averaged cross-entropy, target tokens)."""
    with precision.autocast():
        out = forward(*inputs, captions)
    targets = captions[:, 1:]
    logits, attention = out.logits.float(), out.attention.float()  # no-ops in fp32
    if ctx.enabled:
        loss, ce = _rank_loss(logits, targets, attention, config, ctx, captions.device)
    else:
        loss, ce = caption_loss(
            logits, targets, attention, config.attention_lambda, config.label_smoothing
        )
    optimizer.zero_grad(set_to_none=True)
    precision.backward_and_step(loss, optimizer, model.parameters, config.grad_clip)
    return float(ce), int((targets != PAD_ID).sum())


def _rank_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    attention: torch.Tensor,
    config: TrainConfig,
    ctx: DistContext,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    mask = targets != PAD_ID
    n_local, b_local = int(mask.sum()), targets.shape[0]
    n_global, b_global = distributed.all_reduce_sums(ctx, [n_local, b_local], device)
    ce_mean, ce = caption_loss(logits, targets, attention, 0.0, config.label_smoothing)
    if n_local == 0:  # cannot happen with real captions; keeps the graph connected for DDP
        ce_mean = logits.sum() * 0.0
    loss = ce_mean * (n_local * ctx.world_size / n_global)
    if config.attention_lambda > 0:
        # Same regulariser as caption_loss: mean over images and regions of (1 - coverage)^2.
        coverage = (attention * mask.unsqueeze(-1).to(attention.dtype)).sum(dim=1)
        penalty = ((1.0 - coverage) ** 2).mean()
        loss = loss + config.attention_lambda * penalty * (b_local * ctx.world_size / b_global)
    return loss, ce


def train_epoch(
    forward: Forward,
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    global_step: int,
    tools: EpochTools,
    ctx: DistContext,
) -> tuple[float, int, float]:
    """One pass over ``loader``; returns (token-averaged training loss over all ranks, step,
    captions per second over all ranks)."""
    model.train()
    if isinstance(forward, torch.nn.Module):
        forward.train()
    total, tokens_seen, captions_seen = 0.0, 0, 0
    started = time.perf_counter()
    rate = 0.0
    bar = tools.bar(loader, desc=f"epoch {epoch}")
    for *batch, captions in bar:
        inputs, captions = [t.to(device) for t in batch], captions.to(device)
        ce, n_tokens = train_step(
            forward, model, inputs, captions, optimizer, config, tools.precision, ctx
        )
        total += ce * n_tokens
        tokens_seen += n_tokens
        captions_seen += captions.shape[0]
        global_step += 1
        rate = captions_seen * ctx.world_size / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{ce:.3f}", captions_s=f"{rate:.0f}")
        if global_step % max(config.log_every, 1) == 0:
            tools.scalar("loss/train_batch", ce, global_step)
    if ctx.enabled:
        total, tokens = distributed.all_reduce_sums(ctx, [total, tokens_seen], device)
        return total / max(tokens, 1.0), global_step, rate
    return total / max(tokens_seen, 1), global_step, rate


@torch.inference_mode()
def evaluate_loss(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: Precision | None = None,
    ctx: DistContext | None = None,
) -> float:
    """Token-averaged cross-entropy with teacher forcing (no regulariser).

    Under DDP each rank evaluates its shard and the token-loss sums and token counts are
    summed over the ranks, so every rank gets the single-process value.
    """
    model.eval()
    total, tokens = 0.0, 0
    for *batch, captions in loader:
        inputs, captions = [t.to(device) for t in batch], captions.to(device)
        if precision is None:
            out = model(*inputs, captions)
        else:
            with precision.autocast():
                out = model(*inputs, captions)
        targets = captions[:, 1:]
        _, ce = caption_loss(out.logits.float(), targets, out.attention.float())
        n = int((targets != PAD_ID).sum())
        total += float(ce) * n
        tokens += n
    if ctx is not None and ctx.enabled:
        total, summed = distributed.all_reduce_sums(ctx, [total, tokens], device)
        return total / max(summed, 1.0)
    return total / max(tokens, 1)
