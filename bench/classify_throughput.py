"""Document-type classification throughput, end to end (decode included), against the bound.

    OMP_NUM_THREADS=2 .venv/bin/python bench/classify_throughput.py --model runs/doctype-s0/model \\
        --images ../shared/data/doctypes --count 600 --threads 2

``DocTypeClassifier.classify_paths`` over ``--count`` files (decoding in ``--workers``
processes, batches of 32), against the backbone's raw forward on random tensors of the same
batch size (the bound: the head itself costs nothing). ``--sizes 224,160`` measures the same
head on the stock backbone at each input side in one run (speed does not depend on the
weights, so one trained model serves every size). ``--without-style`` also measures, at each
size, a head on the pooled grid alone (no style statistics taken: untrained, speed only).
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.model import DocTypeHead
from captioner.vision.backbones import load_backbone
from captioner.vision.images import IMAGE_SUFFIXES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="classifier folder")
    parser.add_argument("--images", type=Path, required=True, help="folder (searched recursively)")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", help="comma-separated input sides (default: the model's)")
    parser.add_argument(
        "--without-style", action="store_true", help="also time a pooled-grid-only head"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[: args.count]
    trained = DocTypeClassifier.from_pretrained(args.model)
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [None]
    for size in sizes:
        classifier = trained
        if size is not None:
            config = dataclasses.replace(trained.config, image_size=size, backbone_weights_id="")
            backbone = load_backbone(config.backbone, image_size=size)
            classifier = DocTypeClassifier(trained.head, config, backbone)
        _measure(classifier, files, args)
        if args.without_style and classifier.config.style_blocks:
            plain = dataclasses.replace(classifier.config, style_blocks=[], style_channels=0)
            head = DocTypeHead.for_config(plain)
            _measure(DocTypeClassifier(head, plain, classifier.backbone), files, args)


def _measure(classifier: DocTypeClassifier, files: list[Path], args: argparse.Namespace) -> None:
    backbone = classifier.backbone
    assert backbone is not None
    list(classifier.classify_paths(files[:64], args.batch_size, 0, progress=False))  # warm-up
    started = time.perf_counter()
    results = list(classifier.classify_paths(files, args.batch_size, args.workers, progress=False))
    end_to_end = len(results) / (time.perf_counter() - started)
    size = backbone.preprocessing.image_size
    pixels = torch.randn(args.batch_size, 3, size, size).contiguous(
        memory_format=torch.channels_last
    )
    model = backbone.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(pixels)
        batches = max(1, len(files) // args.batch_size)
        started = time.perf_counter()
        for _ in range(batches):
            model(pixels)
        raw = batches * args.batch_size / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "image_size": size,
                "style_blocks": classifier.config.style_blocks,
                "images": len(results),
                "failed": sum(1 for _, p, _ in results if p is None),
                "threads": args.threads,
                "workers": args.workers,
                "end_to_end_images_per_s": round(end_to_end, 1),
                "raw_forward_images_per_s": round(raw, 1),
                "ratio": round(end_to_end / raw, 3),
                "cpu": platform.processor() or platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
