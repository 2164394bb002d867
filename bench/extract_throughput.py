"""Feature-extraction throughput: ``extract_split`` images/s against the backbone alone.

    OMP_NUM_THREADS=1 .venv/bin/python bench/extract_throughput.py --threads 1 \\
        --images ../shared/data/flickr8k-mini/Images --count 96

For each backbone at its resolution: the raw forward throughput on random tensors (the ceiling),
JPEG decoding + preprocessing alone in this process, and the whole ``extract_split`` (decoding
in DataLoader workers, channels-last forward, float16 cache writes) with 0 and with N workers,
and the raw forward in channels-last (NHWC) memory format, which ``extract_split`` uses. The
ratio end-to-end / best raw forward says how much of the decoding and I/O is hidden behind the
compute.
MobileNetV2 uses its offline ImageNet weights when installed; the others random weights (the
speed of a network does not depend on its weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from captioner.features.extract import extract_split
from captioner.vision.backbones import Backbone, load_backbone
from captioner.vision.images import load_image

BACKBONES = ("mobilenet_v2", "efficientnet_b0", "resnet50", "inception_v3")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEG photos")
    parser.add_argument("--count", type=int, default=96, help="images per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the forward")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def raw_forward(backbone: Backbone, batch: int, count: int, channels_last: bool = False) -> float:
    """Images/s of the backbone on random tensors at its resolution."""
    size = backbone.preprocessing.image_size
    pixels = torch.randn(batch, 3, size, size)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        backbone = backbone.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        backbone(pixels[:2])
        started = time.perf_counter()
        done = 0
        while done < count:
            backbone(pixels)
            done += batch
    if channels_last:
        backbone.to(memory_format=torch.contiguous_format)
    return done / (time.perf_counter() - started)


def decode_only(backbone: Backbone, paths: list[Path]) -> float:
    """Images/s of load_image + the backbone's preprocessing, in this process."""
    started = time.perf_counter()
    for path in paths:
        backbone.transform(load_image(path))
    return len(paths) / (time.perf_counter() - started)


def end_to_end(backbone: Backbone, paths: list[Path], batch: int, workers: int) -> float:
    """Images/s of extract_split into a fresh cache (worker start-up included)."""
    records = [(f"{i:06d}", path) for i, path in enumerate(paths)]
    with tempfile.TemporaryDirectory() as folder:
        report = extract_split(
            records,
            Path(folder) / "cache",
            backbone,
            batch_size=batch,
            num_workers=workers,
            progress=False,
        )
    if report.failed:
        raise SystemExit(f"{len(report.failed)} images failed: {list(report.failed.items())[:3]}")
    return report.images_per_second


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    photos = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"{args.images}: no .jpg files")
    paths = [photos[i % len(photos)] for i in range(args.count)]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "images": str(args.images),
        "count": args.count,
        "load_average_start": os.getloadavg(),
        "backbones": {},
    }
    print(
        f"{'backbone':16s} {'size':>4s} {'raw':>7s} {'raw NHWC':>8s} {'decode':>7s} "
        f"{'e2e w0':>7s} {'e2e w' + str(args.workers):>7s} {'ratio':>6s}  (images/s; ratio: "
        "end-to-end / best raw forward)"
    )
    for name in args.backbones.split(","):
        weights = "DEFAULT" if name == "mobilenet_v2" else "none"
        backbone = load_backbone(name, weights)
        row: dict[str, Any] = {"weights": backbone.weights_id, "size": 0}
        row["size"] = backbone.preprocessing.image_size
        raw, raw_cl, e2e0, e2ew = [], [], [], []
        for _ in range(args.repeats):  # interleaved so load changes hit every column
            raw.append(raw_forward(backbone, args.batch_size, args.count))
            raw_cl.append(raw_forward(backbone, args.batch_size, args.count, channels_last=True))
            e2e0.append(end_to_end(backbone, paths, args.batch_size, 0))
            e2ew.append(end_to_end(backbone, paths, args.batch_size, args.workers))
        row["raw_forward"] = statistics.median(raw)
        row["raw_forward_channels_last"] = statistics.median(raw_cl)
        row["decode_preprocess"] = decode_only(backbone, paths)
        row["end_to_end_workers_0"] = statistics.median(e2e0)
        row[f"end_to_end_workers_{args.workers}"] = statistics.median(e2ew)
        row["ratio"] = row[f"end_to_end_workers_{args.workers}"] / max(
            row["raw_forward"], row["raw_forward_channels_last"]
        )
        report["backbones"][name] = row
        print(
            f"{name:16s} {row['size']:4d} {row['raw_forward']:7.1f} "
            f"{row['raw_forward_channels_last']:8.1f} {row['decode_preprocess']:7.1f} "
            f"{row['end_to_end_workers_0']:7.1f} "
            f"{row[f'end_to_end_workers_{args.workers}']:7.1f} {row['ratio']:6.0%}",
            flush=True,
        )
    report["load_average_end"] = os.getloadavg()
    print(f"load average: start {report['load_average_start']}, end {report['load_average_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
