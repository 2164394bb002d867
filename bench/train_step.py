"""Training-step throughput of the decoder on random features (captions/s).

    .venv/bin/python bench/train_step.py --batch-size 32 --vocab 5000 --steps 20

Defaults are the seed's sizes: 64×2048 InceptionV3 grids, embedding 256, GRU 512,
vocabulary 5,000, captions of 20 words.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from captioner.model.config import ModelConfig
from captioner.model.decoder import ShowAttendTell
from captioner.model.losses import caption_loss


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=args.vocab, feature_channels=args.channels, num_regions=args.regions
    )
    model = ShowAttendTell(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    feats = torch.randn(args.batch_size, args.regions, args.channels)
    caps = torch.randint(4, args.vocab, (args.batch_size, args.length + 2))
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            out = model(feats, caps)
            loss, _ = caption_loss(out.logits, caps[:, 1:], out.attention)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(args.steps * args.batch_size / (time.perf_counter() - started))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, vocab {args.vocab}, {args.regions}x{args.channels} features, "
        f"{args.length} words: {statistics.median(rates):.0f} captions/s "
        f"(median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
