"""Worker script that tests/test_distributed.py launches with torchrun (2 gloo CPU processes).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        IMAGES OUT

One launch (starting processes is the slow part) runs one DDP training step, writing
OUT/step/{loss.json,ddp.st}, then a sharded extraction of IMAGES into OUT/cache.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.runtime import distributed
from captioner.training.config import TrainConfig
from captioner.training.precision import Precision
from captioner.training.steps import train_step

CPU = torch.device("cpu")


def step_fixture() -> tuple[ShowAttendTell, torch.Tensor, torch.Tensor, TrainConfig]:
    """A seeded model, a global batch of 7 captions of different lengths, and the settings."""
    torch.manual_seed(0)
    config = TrainConfig(attention_lambda=0.7, label_smoothing=0.1, grad_clip=0.5)
    model = ShowAttendTell(
        ModelConfig(
            vocab_size=30,
            feature_channels=8,
            num_regions=4,
            encoder_dim=16,
            embed_dim=8,
            attention_dim=16,
            hidden_dim=24,
            init_hidden="mean",
        )
    )
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(7, 4, 8, generator=generator)
    lengths = [3, 9, 5, 4, 8, 2, 6]  # words; + <start> and <end>
    captions = torch.zeros(7, max(lengths) + 2, dtype=torch.long)
    for i, n in enumerate(lengths):
        captions[i, 0] = 1
        captions[i, 1 : n + 1] = torch.randint(4, 30, (n,), generator=generator)
        captions[i, n + 1] = 2
    return model, features, captions, config


def shard(
    features: torch.Tensor, captions: torch.Tensor, rank: int, world: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows rank, rank + world, ... with the padding trimmed to the shard's longest caption."""
    f, c = features[rank::world], captions[rank::world]
    return f, c[:, : int((c != 0).sum(dim=1).max())]


def run_step(out: Path) -> None:
    ctx, device = distributed.setup(CPU)
    model, features, captions, config = step_fixture()
    forward = distributed.wrap_model(model, ctx, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    f, c = shard(features, captions, ctx.rank, ctx.world_size)
    ce, n = train_step(forward, model, [f], c, optimizer, config, Precision("fp32", device), ctx)
    total, tokens = distributed.all_reduce_sums(ctx, [ce * n, n], device)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "ddp.st")
        (out / "loss.json").write_text(json.dumps({"loss": total / tokens, "tokens": tokens}))


def run_extract(images: Path, out: Path) -> None:
    from test_features_extract import tiny_backbone

    from captioner.features.extract import extract_split

    ctx = distributed.current()
    records = [(p.name, p) for p in sorted(images.iterdir())]
    report = extract_split(
        records, out, tiny_backbone(), batch_size=1, num_workers=0, progress=False, flush_every=1
    )
    if ctx.is_main:
        summary = {"extracted_now": report.extracted_now, "failed": sorted(report.failed)}
        out.with_name(out.name + ".report.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    faulthandler.enable(all_threads=True)  # a rank that aborts shows where
    torch.set_num_threads(1)
    images, out = Path(sys.argv[1]), Path(sys.argv[2])
    run_step(out / "step")
    run_extract(images, out / "cache")
    distributed.dist.destroy_process_group()
    # About 1 launch in 20, a rank aborted ("terminate called without an active exception",
    # SIGABRT) after its last Python line, in the interpreter's finalization (faulthandler: no
    # Python frame), with every output written: a torch/gloo teardown race, not ours. The
    # outputs are on disk, so end without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
