"""Training-step throughput of the decoder on random features (captions/s).

    .venv/bin/python bench/train_step.py --batch-size 32 --vocab 5000 --steps 20
    .venv/bin/python bench/train_step.py --precision bf16 --compile --device cuda

Defaults are the seed's sizes: 64×2048 InceptionV3 grids, embedding 256, GRU 512,
vocabulary 5,000, captions of 20 words. ``--precision`` and ``--compile`` go through the
trainer's own step (``captioner.training.steps.train_step``); compilation happens in an untimed
warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.runtime.distributed import DistContext
from captioner.training.config import TrainConfig
from captioner.training.precision import CompiledForward, Precision
from captioner.training.steps import train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--regions", type=int, default=64)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--length", type=int, default=20, help="words per caption")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = ModelConfig(
        vocab_size=args.vocab, feature_channels=args.channels, num_regions=args.regions
    )
    model = ShowAttendTell(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    feats = torch.randn(args.batch_size, args.regions, args.channels, device=device)
    caps = torch.randint(4, args.vocab, (args.batch_size, args.length + 2), device=device)
    settings = TrainConfig(grad_clip=5.0, precision=args.precision, compile=args.compile)
    precision = Precision(args.precision, device)
    forward = CompiledForward(model, print) if args.compile else model
    single = DistContext()

    def step() -> None:
        train_step(forward, model, [feats], caps, optimizer, settings, precision, single)

    started = time.perf_counter()
    step()  # warm-up (and compilation)
    _sync(device)
    warmup = time.perf_counter() - started
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - started))
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"{args.precision}{' compiled' if args.compile else ''}, batch "
        f"{args.batch_size}, vocab {args.vocab}, {args.regions}x{args.channels} features, "
        f"{args.length} words: {statistics.median(rates):.0f} captions/s "
        f"(median of {args.repeats}; warm-up step {warmup:.1f} s)"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
