"""PSNR / SSIM / images per second of our denoiser against classical ones, in one run.

    python bench/denoise.py --model runs/denoiser/model

Clean held-out photos (the ``test`` file-name bucket of the training folder, which
``captioner denoise train`` never reads, plus the ``skimage.data`` photos) get Gaussian noise
of each sigma (seeded, clipped and rounded to 8 bits); each method denoises them and is scored
against the clean photo with ``skimage.metrics`` (SSIM with Wang et al.'s Gaussian window).
Methods: the noisy input itself, our denoiser, OpenCV ``fastNlMeansDenoisingColored`` and
``skimage.restoration.denoise_tv_chambolle``. The two classical methods get their strength
tuned per sigma on a few images of the ``val`` bucket (not the measured ones), so they are
compared at their best. Timing: one CPU thread each by default (``--threads``); TV is
single-threaded numpy anyway. ``--size 224``: every clean photo is first resized to 224 x 224
(antialiased bilinear, as the pipeline feeds the captioner), the resolution the chain denoises
at. ``--self-ensemble 1,2,8``: each model also as the mean of 2 (mirror) or 8 (flips and
rotations) copies, labelled ``ours x2`` / ``ours x8``. Needs the ``bench`` extra:
``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioner.denoise.data import list_images, split_images
from captioner.denoise.denoiser import load_denoiser
from captioner.vision.images import load_image

try:
    import cv2
    from skimage import data as skdata
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.restoration import denoise_tv_chambolle
except ImportError as exc:  # pragma: no cover - a missing extra
    sys.exit(f"bench/denoise.py needs the bench extra (pip install -e '.[bench]'): {exc}")

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/vietnamese-captions/images"
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
NLM_FACTORS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # h = factor * sigma
TV_WEIGHTS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24)  # on the [0, 1] scale

Method = Callable[[np.ndarray], np.ndarray]


def add_noise(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(clean + rng.normal(0.0, sigma, clean.shape)), 0, 255).astype(np.uint8)


def nlm(h: float) -> Method:
    return lambda noisy: cv2.fastNlMeansDenoisingColored(noisy, None, h, h, 7, 21)


def tv(weight: float) -> Method:
    def run(noisy: np.ndarray) -> np.ndarray:
        out = denoise_tv_chambolle(noisy.astype(np.float32) / 255.0, weight=weight, channel_axis=-1)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    return run


def ours(model: Path, self_ensemble: int = 1) -> Method:
    """The denoiser as the pipeline runs it (scales folded, channels-last: ``Denoiser``)."""
    denoiser = load_denoiser(model, self_ensemble=self_ensemble)

    def run(noisy: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(noisy.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        out = denoiser.denoise_tensor(x)[0].permute(1, 2, 0).numpy()
        return np.rint(out * 255.0).astype(np.uint8)

    return run


def psnr(clean: np.ndarray, out: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(clean, out, data_range=255))


def ssim(clean: np.ndarray, out: np.ndarray) -> float:
    return float(
        structural_similarity(
            clean,
            out,
            data_range=255,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def tune(make: Callable[[float], Method], grid: tuple[float, ...], pairs: list) -> float:
    """The grid value with the best mean PSNR on (clean, noisy) tuning pairs."""
    scores = [np.mean([psnr(c, make(v)(n)) for c, n in pairs]) for v in grid]
    return grid[int(np.argmax(scores))]


def measure(method: Method, pairs: list) -> dict[str, float]:
    method(pairs[0][1])  # warm-up (first-call allocations, thread pools)
    seconds, p, s = 0.0, [], []
    for clean, noisy in pairs:
        started = time.perf_counter()
        out = method(noisy)
        seconds += time.perf_counter() - started
        p.append(psnr(clean, out))
        s.append(ssim(clean, out))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "ips": len(pairs) / seconds}


def load_sets(images: Path, count: int, size: int | None = None) -> dict[str, list[np.ndarray]]:
    files = split_images(list_images(images), "test")[:count]
    sets = {f"{images.parent.name} test ({len(files)})": [_array(f) for f in files]}
    photos = [getattr(skdata, name)() for name in SKIMAGE_PHOTOS]
    sets[f"skimage.data ({len(photos)})"] = [
        np.stack([p] * 3, axis=-1) if p.ndim == 2 else p[..., :3] for p in photos
    ]
    return {name: [_resized(p, size) for p in pictures] for name, pictures in sets.items()}


def _resized(picture: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return picture
    resized = Image.fromarray(picture).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _array(path: Path) -> np.ndarray:
    return np.asarray(load_image(path), dtype=np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        nargs="+",
        required=True,
        help="denoiser folder(s); several give the PSNR-against-speed curve",
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=40, help="held-out photos to measure")
    parser.add_argument("--tune-count", type=int, default=4, help="val photos to tune on")
    parser.add_argument("--sigmas", default="15,25,50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of torch and OpenCV alike (0: theirs)"
    )
    parser.add_argument("--size", type=int, help="resize the clean photos to SIZE x SIZE first")
    parser.add_argument(
        "--self-ensemble", default="1", help="copies averaged per model, e.g. 1,2,8 (default 1)"
    )
    parser.add_argument("--output", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--plot", type=Path, help="also draw PSNR against images/s (PNG)")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    sets = load_sets(args.images, args.count, args.size)
    tuning = [
        _resized(_array(f), args.size)
        for f in split_images(list_images(args.images), "val")[: args.tune_count]
    ]
    ensembles = [int(k) for k in args.self_ensemble.split(",")]
    models = {
        _model_label(m, args.model) + (f" x{k}" if k != 1 else ""): ours(m, k)
        for m in args.model
        for k in ensembles
    }
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{cv2.getNumThreads()} OpenCV threads; models {', '.join(map(str, args.model))}"
        + (f"; photos resized to {args.size} px" if args.size else "")
    )
    results: list[dict[str, object]] = []
    for sigma in sigmas:
        tune_pairs = [(c, add_noise(c, sigma, args.seed + 1000 + i)) for i, c in enumerate(tuning)]
        h = tune(lambda f, s=sigma: nlm(f * s), NLM_FACTORS, tune_pairs) * sigma
        weight = tune(tv, TV_WEIGHTS, tune_pairs)
        methods: dict[str, Method] = {
            "noisy input": lambda n: n,
            **models,
            f"OpenCV NLM (h={h:g})": nlm(h),
            f"TV Chambolle (w={weight:g})": tv(weight),
        }
        for name, pictures in sets.items():
            pairs = [(c, add_noise(c, sigma, args.seed + i)) for i, c in enumerate(pictures)]
            for label, method in methods.items():
                row = {"set": name, "sigma": sigma, "method": label, **measure(method, pairs)}
                results.append(row)
                print(f"  {name} sigma {sigma:g} {label}: {row['psnr']:.2f} dB", file=sys.stderr)
    print()
    print("| images | σ | method | PSNR (dB) | SSIM | images/s |")
    print("|---|---:|---|---:|---:|---:|")
    for row in results:
        ips = "—" if row["method"] == "noisy input" else f"{row['ips']:.1f}"
        print(
            f"| {row['set']} | {row['sigma']:g} | {row['method']} | {row['psnr']:.2f} | "
            f"{row['ssim']:.4f} | {ips} |"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot_curve(results, args.plot)
    return 0


def _model_label(model: Path, models: list[Path]) -> str:
    """``ours`` for one model; with several, ``ours (RUN)`` after each run folder's name."""
    if len(models) == 1:
        return "ours"
    folder = model.parent if model.name == "model" else model
    return f"ours ({folder.name})"


def plot_curve(results: list[dict[str, Any]], path: Path) -> None:
    """PSNR against images/s, one panel per sigma: a colour per method, a marker per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["method"] != "noisy input"]
    sigmas = sorted({r["sigma"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = {name: "os^vD"[i % 5] for i, name in enumerate(sets)}
    fig, axes = plt.subplots(1, len(sigmas), figsize=(6 * len(sigmas) + 4, 5), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas, strict=True):
        for r in (r for r in rows if r["sigma"] == sigma):
            ax.scatter(r["ips"], r["psnr"], color=colours[r["method"]], marker=markers[r["set"]])
        ax.set_xscale("log")
        ax.set_xlabel("images/s (one thread)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"sigma {sigma:g}")
        ax.grid(True, alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in methods
    ] + [plt.Line2D([], [], color="black", marker=markers[n], linestyle="", label=n) for n in sets]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend stays inside the picture
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
