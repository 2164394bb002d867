"""Teacher forcing on real caption batches with and without skipping the padded steps.

Interleaved in one process (so a busy machine slows both sides alike); reports captions/s and
the median ratio. Needs a prepared manifest and its extracted features:

    OMP_NUM_THREADS=1 .venv/bin/python bench/skip_padding.py --manifest runs/real/ucm.json \
        --features runs/real/ucm-features
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.losses import caption_loss
from captioner.data.manifest import Manifest
from captioner.data.vocabulary import Vocabulary
from captioner.features.cache import FeatureCache
from captioner.training.data import CaptionFeatureDataset, collate_captions, pair_captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    manifest = Manifest.load(args.manifest)
    cache = FeatureCache.open(f"{args.features}/train")
    train = manifest.split("train")
    vocab = Vocabulary.build([c for r in train for c in r.captions])
    data = pair_captions(cache, train, vocab, 40)
    loader = DataLoader(
        CaptionFeatureDataset(cache, data),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_captions,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [batch for _, batch in zip(range(args.batches), loader, strict=False)]
    real = statistics.mean(float((c[:, 1:] != 0).sum(1).float().mean()) for _, c in batches)
    padded = statistics.mean(c.shape[1] - 1 for _, c in batches)
    print(f"targets per caption: {real:.1f} real, {padded:.1f} with padding")
    config = ModelConfig(
        vocab_size=len(vocab),
        feature_channels=int(cache.header["channels"]),
        num_regions=len(batches[0][0][0]),
        dropout=0.3,
        init_hidden="mean",
        position_embedding=True,
    )
    model = ShowAttendTell(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def epoch(skip: bool) -> float:
        started = time.perf_counter()
        for features, captions in batches:
            out = model(features, captions, skip_padding=skip)
            loss, _ = caption_loss(out.logits, captions[:, 1:], out.attention)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return len(batches) * args.batch_size / (time.perf_counter() - started)

    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for skip in (False, True):
            rates[skip].append(epoch(skip))
    for skip, label in ((False, "every padded step"), (True, "padding skipped")):
        print(
            f"{label}: {statistics.median(rates[skip]):.1f} captions/s "
            f"({', '.join(f'{r:.1f}' for r in rates[skip])})"
        )
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    print(f"ratio: {ratio:.2f}x")


if __name__ == "__main__":
    main()
