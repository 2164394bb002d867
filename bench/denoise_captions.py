"""Caption quality of one captioner on clean, noisy and denoised-then-captioned test images.

    python bench/denoise_captions.py --manifest runs/real/ucm.json \
        --model runs/real/ucm-run/model --denoiser runs/denoiser/model --work runs/dncap/ucm

Writes Gaussian-noisy copies (sigma 25 by default, seeded, lossless PNG) of the split's images
and a manifest pointing to them, then runs the ordinary commands: ``captioner extract`` of the
noisy copies without and with ``--denoise``, and ``captioner evaluate`` of the same model on
the clean features (``--clean-features``, else extracted here), the noisy and the denoised ones.
Prints a markdown table and every command it ran.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.cli import main as captioner
from captioner.data.manifest import ImageRecord, Manifest
from captioner.vision.images import load_image

SCORES = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def write_noisy_copies(
    manifest: Manifest, splits: list[str], sigma: float, seed: int, out: Path
) -> Path:
    """Noisy PNG copies of the splits' images and a manifest of them; returns its path."""
    records = []
    for i, record in enumerate(r for r in manifest.images if r.split in splits):
        name = str(Path(record.file).with_suffix(".png"))
        target = out / "images" / name
        if not target.exists():
            clean = np.asarray(load_image(manifest.path_of(record)), dtype=np.float64)
            rng = np.random.default_rng([seed, i])
            noisy = np.clip(np.rint(clean + rng.normal(0.0, sigma, clean.shape)), 0, 255)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy.astype(np.uint8)).save(target)
        records.append(ImageRecord(name, record.split, record.captions))
    path = out / "noisy.json"
    source = {"noisy_copy_of": str(manifest.image_root), "sigma": sigma, "seed": seed}
    Manifest(out / "images", records, source, {}).save(path)
    return path


def run(args: list[str], log: list[str]) -> float:
    log.append("captioner " + shlex.join(args))
    started = time.perf_counter()
    if captioner(args) != 0:
        sys.exit(f"failed: {log[-1]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="captioner model folder")
    parser.add_argument("--denoiser", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="folder for copies and caches")
    parser.add_argument("--clean-features", type=Path, help="existing features of the manifest")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beam-size", default="3")
    parser.add_argument(
        "--retrain",
        type=Path,
        metavar="YAML",
        help="also train a captioner with this config on denoised noisy copies of every split",
    )
    parser.add_argument("--retrain-set", nargs="*", default=[], help="its --set overrides")
    args = parser.parse_args()

    config = json.loads((args.model / "config.json").read_text(encoding="utf-8"))
    backbone = config["backbone"]["backbone"]
    manifest = Manifest.load(args.manifest)
    splits = manifest.split_names() if args.retrain else [args.split]
    noisy_manifest = write_noisy_copies(manifest, splits, args.sigma, args.seed, args.work)
    log: list[str] = []
    common = ["--splits", args.split, "--backbone", backbone, "--no-progress"]
    clean_features = args.clean_features
    if clean_features is None:
        clean_features = args.work / "clean-features"
        clean = ["extract", "--manifest", str(args.manifest), "--out", str(clean_features)]
        run([*clean, *common], log)
    extract = ["extract", "--manifest", str(noisy_manifest), *common]
    run([*extract, "--out", str(args.work / "noisy-features")], log)
    seconds = run(
        [*extract, "--out", str(args.work / "denoised-features"), "--denoise", str(args.denoiser)],
        log,
    )
    noisy = f"noisy (σ={args.sigma:g})"
    denoised = args.work / "denoised-features"
    evaluations = [
        ("clean", args.model, args.manifest, clean_features),
        (noisy, args.model, noisy_manifest, args.work / "noisy-features"),
        (f"{noisy}, denoised first", args.model, noisy_manifest, denoised),
    ]
    if args.retrain:
        others = ",".join(s for s in splits if s != args.split)
        extract_all = ["extract", "--manifest", str(noisy_manifest), "--splits", others]
        run(
            [*extract_all, "--backbone", backbone, "--no-progress", "--out", str(denoised)]
            + ["--denoise", str(args.denoiser)],
            log,
        )
        train = ["train", "--config", str(args.retrain), "--manifest", str(noisy_manifest)]
        train += ["--features", str(denoised), "--out", str(args.work / "retrained")]
        minutes = run([*train, "--no-progress", "--set", *args.retrain_set], log) / 60
        print(f"retraining on denoised noisy copies: {minutes:.1f} min")
        label = f"{noisy}, denoised first, captioner retrained on denoised copies"
        evaluations.append((label, args.work / "retrained" / "model", noisy_manifest, denoised))
    rows = []
    for i, (label, model, manifest_path, features) in enumerate(evaluations):
        report = args.work / f"eval-{i}-{features.name}.json"
        evaluate = ["evaluate", "--model", str(model), "--manifest", str(manifest_path)]
        evaluate += ["--features", str(features), "--split", args.split, "--no-progress"]
        run([*evaluate, "--beam-size", args.beam_size, "--output", str(report)], log)
        scores = json.loads(report.read_text(encoding="utf-8"))
        rows.append((label, scores["scores"], scores["num_images"]))
    print()
    print(f"| {args.split} images | n | " + " | ".join(SCORES) + " |")
    print("|---|---:|" + "---:|" * len(SCORES))
    for label, scores, n in rows:
        values = " | ".join(f"{scores[k]:.1f}" if k in scores else "—" for k in SCORES)
        print(f"| {label} | {n} | {values} |")
    print(f"\ndenoise + extract of the noisy split: {seconds:.0f} s")
    print("commands:")
    for line in log:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
