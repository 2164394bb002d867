"""Where the time of a training step (or of a decode) goes: torch.profiler's top operators.

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_train.py --what train --variant fp32
    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_train.py --what beam --grids 200

Same sizes and data as bench/vs_tensorflow.py (batch 64, 64×2048 grids, vocabulary 5,000,
captions of 8–20 words padded to 22 tokens). Operators are grouped by input shape, so the
table says which layer each matrix product belongs to.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_tensorflow as bench  # noqa: E402  (the benchmark's model and data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("train", "greedy", "beam", "beam1"), default="train")
    parser.add_argument("--variant", choices=bench.VARIANTS, default="fp32")
    parser.add_argument("--grids", type=int, default=200, help="grids decoded (decode modes)")
    parser.add_argument("--steps", type=int, default=2, help="profiled training steps")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys_argv, sys.argv = sys.argv, sys.argv[:1]  # the benchmark's default sizes
    try:
        sizes = bench.parse_args()
    finally:
        sys.argv = sys_argv
    sizes.decode_batch = max(args.grids, 1)
    ours = bench.build_captioner(sizes)
    feats, caps = bench.make_data(sizes, sizes.batch_size, seed=1)
    grids, _ = bench.make_data(sizes, args.grids, seed=2)
    work = {
        "train": lambda: [ours["train"](feats, caps, args.variant) for _ in range(args.steps)],
        "greedy": lambda: ours["greedy"](grids),
        "beam": lambda: ours["beam_batched"](grids),
        "beam1": lambda: ours["beam_single"](grids),
    }[args.what]
    work()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total",
            row_limit=args.rows,
            max_name_column_width=28,
            max_shapes_column_width=64,
        )
    )
    print(f"{args.what} ({args.variant}): {seconds:.2f} s under the profiler")


if __name__ == "__main__":
    main()
