"""The denoiser table of docs/RESULTS.md from the runs of scripts/denoise_seeds.sh.

    python scripts/denoise_table.py runs/denoiser-s0-t1 runs/denoiser-s1-t1 runs/denoiser-s0-t2

Per run: the best epoch, its validation PSNR, the wall time, and (from RUN/bench.json, written
by bench/denoise.py) PSNR/SSIM at sigma 25 of ours, NLM and TV on both held-out sets; then the
mean and spread (max - min) of ours over the runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    rows, ours, classics = [], {}, {}
    for run in runs:
        config = json.loads((run / "model" / "config.json").read_text())["training"]
        settings = json.loads((run / "train_config.json").read_text())
        bench_file = run / "bench.json"
        bench = json.loads(bench_file.read_text()) if bench_file.is_file() else []
        cells = []
        for row in bench:
            if row["sigma"] != 25:
                continue
            key = row["set"]
            if row["method"] == "ours":
                ours.setdefault(key, []).append((row["psnr"], row["ssim"], row["ips"]))
                cells.append(f"{row['psnr']:.2f} / {row['ssim']:.3f}")
            elif row["method"].startswith(("OpenCV", "TV")):
                classics.setdefault((key, row["method"].split(" (")[0]), []).append(
                    (row["psnr"], row["ssim"], row["ips"])
                )
        rows.append(
            f"| {settings['seed']} | {settings['threads']} | {config['best_epoch']} / "
            f"{config['epochs_run']} | {config['val']['val_sigma25_psnr']:.2f} | "
            f"{config['seconds'] / 60:.1f} | " + " | ".join(cells) + " |"
        )
    print("| seed | threads | best / epochs run | val σ 25 PSNR | minutes | "
          + " | ".join(f"{k}: PSNR / SSIM" for k in ours) + " |")  # fmt: skip
    print("|---" * (5 + len(ours)) + "|")
    print("\n".join(rows))
    print()
    for key, values in ours.items():
        p = [v[0] for v in values]
        s = [v[1] for v in values]
        print(f"{key}: ours {statistics.mean(p):.2f} dB (spread {max(p) - min(p):.2f}), "
              f"SSIM {statistics.mean(s):.3f} (spread {max(s) - min(s):.3f}), "
              f"{statistics.mean(v[2] for v in values):.1f} images/s")  # fmt: skip
    for (key, name), values in classics.items():
        print(f"{key}: {name} {statistics.mean(v[0] for v in values):.2f} dB, SSIM "
              f"{statistics.mean(v[1] for v in values):.3f}, "
              f"{statistics.mean(v[2] for v in values):.1f} images/s")  # fmt: skip


if __name__ == "__main__":
    main()
