"""One prepared check of the CUDA paths, run by bench/gpu_check.sh: prints a Markdown table.

    .venv/bin/python bench/gpu_check.py --device cuda [--seconds 4] [--json runs/gpu_check.json]
    .venv/bin/python bench/gpu_check.py --device cpu --seconds 0.5     # a dry run anywhere

Rows (each timed for about ``--seconds`` after one untimed warm-up step):
- decoder training steps (the trainer's own ``train_step``) in fp32, fp16 (GradScaler) and
  bf16 autocast, captions/s on MobileNetV2-sized grids (7x7x1280, vocabulary 5,000);
- a training step through the whole backbone (forward and backward of MobileNetV2 at 224 px,
  batch-norm statistics frozen), images/s per precision: the cost of fine-tuning all of it;
- the fine-tuning step `train --fine-tune-blocks 5` takes (training/finetune.py: MobileNetV2's
  last 5 blocks and the decoder on cached 14x14x96 maps, 5 captions per image), captions/s;
- feature extraction (backbone forward, channels-last, fp32 and fp16 autocast), images/s per
  backbone;
- batched beam search (beam 3, 30 words), grids/s.
A precision the device cannot run is reported as "n/a" with the reason, never silently skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import beam_search
from captioner.errors import CaptionerError
from captioner.runtime.distributed import DistContext
from captioner.training.config import TrainConfig
from captioner.training.precision import Precision
from captioner.training.steps import train_step
from captioner.vision.backbones import available_backbones, load_backbone

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2", "resnet50")


def timed(step: Callable[[], int], seconds: float, device: torch.device) -> float:
    """Items per second of ``step`` (which returns how many items it did)."""
    step()  # warm-up: kernels chosen, memory allocated
    _sync(device)
    done, started = 0, time.perf_counter()
    while True:
        done += step()
        _sync(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoder_training(device: torch.device, name: str, seconds: float, batch: int) -> float:
    torch.manual_seed(0)
    model = ShowAttendTell(ModelConfig(vocab_size=5000, feature_channels=1280, num_regions=49)).to(
        device
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    feats = torch.randn(batch, 49, 1280, device=device)
    caps = torch.randint(4, 5000, (batch, 22), device=device)
    settings, precision = TrainConfig(grad_clip=5.0, precision=name), Precision(name, device)

    def step() -> int:
        train_step(model, model, [feats], caps, optimizer, settings, precision, DistContext())
        return batch

    return timed(step, seconds, device)


def backbone_training(device: torch.device, name: str, seconds: float, batch: int) -> float:
    backbone = load_backbone("mobilenet_v2", "none").to(device)
    trunk = backbone.trunk.requires_grad_(True)  # batch norm stays in eval: statistics frozen
    head = torch.nn.Linear(1280, 21).to(device)
    params = [*trunk.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    precision = Precision(name, device)
    pixels = torch.randn(batch, 3, 224, 224, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 21, (batch,), device=device)

    def step() -> int:
        with precision.autocast():
            logits = head(trunk(pixels).mean(dim=(2, 3)))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        precision.backward_and_step(loss, optimizer, lambda: params, 5.0)
        return batch

    return timed(step, seconds, device)


def tuned_training(device: torch.device, name: str, seconds: float, batch: int) -> float:
    from captioner.training.finetune import TunedCaptionModel
    from captioner.vision.blocks import split_backbone

    torch.manual_seed(0)
    prefix, top = split_backbone(load_backbone("mobilenet_v2", "none"), 5)
    decoder = ShowAttendTell(ModelConfig(vocab_size=5000, feature_channels=1280, num_regions=49))
    model = TunedCaptionModel(top.requires_grad_(True), decoder, prefix.grid).to(device)
    optimizer = torch.optim.Adam(
        [{"params": decoder.parameters()}, {"params": top.parameters(), "lr": 1e-4}], lr=1e-3
    )
    images = max(batch // 5, 1)
    maps = torch.randn(images, 14 * 14, 96, device=device)
    index = torch.arange(images, device=device).repeat_interleave(5)
    caps = torch.randint(4, 5000, (len(index), 22), device=device)
    settings, precision = TrainConfig(grad_clip=5.0, precision=name), Precision(name, device)

    def step() -> int:
        model.train()
        train_step(model, model, [maps, index], caps, optimizer, settings, precision, DistContext())
        return len(index)

    return timed(step, seconds, device)


def extraction(device: torch.device, name: str, half: bool, seconds: float, batch: int) -> float:
    backbone = load_backbone(name, "none").to(device, memory_format=torch.channels_last)
    size = backbone.preprocessing.image_size
    pixels = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step() -> int:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=half):
            backbone(pixels)
        return batch

    return timed(step, seconds, device)


def beam_grids(device: torch.device, seconds: float, batch: int) -> float:
    torch.manual_seed(0)
    model = (
        ShowAttendTell(ModelConfig(vocab_size=5000, feature_channels=1280, num_regions=49))
        .to(device)
        .eval()
    )
    feats = torch.randn(batch, 49, 1280, device=device)

    def step() -> int:
        beam_search(model, feats, beam_size=3, max_length=30)
        return batch

    return timed(step, seconds, device)


def attempt(run: Callable[[], float]) -> float | str:
    try:
        return round(run(), 1)
    except (CaptionerError, RuntimeError) as exc:  # e.g. fp16 on a CPU, bf16 on an old GPU
        return f"n/a ({str(exc).splitlines()[0][:90]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed per row")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    t, b = args.seconds, args.batch
    rows: list[dict[str, Any]] = []
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    for name in ("fp32", "fp16", "bf16"):
        rows.append(
            {
                "what": f"decoder training step, {name}",
                "unit": "captions/s",
                "value": attempt(lambda n=name: decoder_training(device, n, t, b)),
            }
        )
    for name in ("fp32", "fp16", "bf16"):
        rows.append(
            {
                "what": f"MobileNetV2 fine-tuning step (224 px), {name}",
                "unit": "images/s",
                "value": attempt(lambda n=name: backbone_training(device, n, t, b // 2)),
            }
        )
    for name in ("fp32", "fp16", "bf16"):
        rows.append(
            {
                "what": f"fine-tuning step, last 5 blocks + decoder (cached maps), {name}",
                "unit": "captions/s",
                "value": attempt(lambda n=name: tuned_training(device, n, t, b)),
            }
        )
    for name in BACKBONES:
        if name not in available_backbones():
            continue
        for half in (False, True):
            rows.append(
                {
                    "what": f"extraction, {name}{', autocast' if half else ''}",
                    "unit": "images/s",
                    "value": attempt(lambda n=name, h=half: extraction(device, n, h, t, b)),
                }
            )
    rows.append(
        {
            "what": "batched beam search (beam 3, 30 words)",
            "unit": "grids/s",
            "value": attempt(lambda: beam_grids(device, t, b)),
        }
    )
    print("| check | value | unit |\n|---|---:|---|")
    for row in rows:
        print(f"| {row['what']} | {row['value']} | {row['unit']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
