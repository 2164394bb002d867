"""Why does a denoiser run stall? Train as ``denoise train`` does and log what goes wrong.

Per step: the loss and the gradient norm before clipping; per epoch: validation PSNR and, for
every ReLU, the share of its channels that are dead (zero on every validation pixel).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/denoise_diagnose.py --threads 2 --epochs 5 \\
        --out runs/denoise-diag/t2.json [--set learning_rate=1e-3 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captioner.denoise.data import (
    list_images,
    load_pictures,
    random_batch,
    split_images,
    validation_set,
)
from captioner.denoise.metrics import score_denoiser
from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.training.denoiser import warmup_cosine
from captioner.training.denoiser_config import DenoiseTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default="../shared/data/vietnamese-captions/images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--activation", default=DenoiserConfig.activation)
    parser.add_argument("--set", nargs="*", default=[], help="DenoiseTrainConfig field=value")
    args = parser.parse_args()
    config = DenoiseTrainConfig(images=args.images, out="-", seed=args.seed)
    for item in args.set:
        key, _, value = item.partition("=")
        kind = type(getattr(config, key))
        setattr(config, key, kind(value) if kind is not type(None) else float(value))
    config.model = {**config.model, "activation": args.activation}
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    mix = config.mix()
    files = list_images(config.images)
    pictures, _ = load_pictures(split_images(files, "train"), config.patch_size)
    val_pictures, _ = load_pictures(split_images(files, "val")[: config.val_images], 16)
    val = validation_set(val_pictures, mix, config.seed)
    net = DenoiserNet(DenoiserConfig.from_dict(config.model))
    optimizer = torch.optim.Adam(
        net.parameters(), lr=config.learning_rate, betas=(0.9, config.adam_beta2)
    )
    total = config.epochs * config.steps_per_epoch  # the schedule of the full run
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, config.warmup_steps, config.min_lr_fraction)
    )
    rng = np.random.default_rng(config.seed)
    steps: list[dict[str, float]] = []
    epochs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        for _ in range(config.steps_per_epoch):
            noisy, clean = random_batch(pictures, config.batch_size, config.patch_size, mix, rng)
            loss = F.l1_loss(net(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(
                net.parameters(), config.clip_grad_norm if config.clip_grad_norm > 0 else 1e9
            )
            optimizer.step()
            scheduler.step()
            steps.append({"loss": round(float(loss), 5), "grad_norm": round(float(norm), 4)})
        scores = score_denoiser(net, val, torch.device("cpu"))
        dead = net.inactive_channels(val["mix"][0])
        recent = steps[-config.steps_per_epoch :]
        record = {
            "epoch": epoch,
            "train_l1": round(float(np.mean([s["loss"] for s in recent])), 5),
            "max_grad_norm": max(s["grad_norm"] for s in recent),
            "median_grad_norm": float(np.median([s["grad_norm"] for s in recent])),
            **scores,
            "dead_share": round(float(np.mean(list(dead.values()))), 3),
            "dead": dead,
            "seconds": round(time.perf_counter() - started, 1),
        }
        epochs.append(record)
        print(
            f"epoch {epoch}: L1 {record['train_l1']:.4f} val {scores['val_psnr']:.2f} "
            f"s25 {scores['val_sigma25_psnr']:.2f} grad max {record['max_grad_norm']:.2f} "
            f"med {record['median_grad_norm']:.3f} dead {record['dead_share']:.3f} "
            f"({record['seconds']:.0f} s)",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                        "epochs": epochs, "steps": steps}))  # fmt: skip


if __name__ == "__main__":
    main()
