"""How much each level of a trained denoiser contributes: σ 25 validation PSNR of the model,
then with parts of it switched off.

    python scripts/denoise_ablate.py RUN/model [MODEL ...] [--images DIR] [--seed S]

For every level: its residual branches off (their gains set to 0), and everything below it cut
(the upsampling into that level's decoder set to 0, so the deeper levels add nothing). The
validation pictures and their noise are those a training run with ``--seed S`` scores on.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from captioner.denoise.corruption import DEFAULT_MIX
from captioner.denoise.data import list_images, load_pictures, split_images, validation_set
from captioner.denoise.denoiser import load_denoiser, resolve_denoiser_dir
from captioner.denoise.metrics import psnr
from captioner.denoise.model import DenoiserNet, residual_gains_of
from captioner.fileio import load_state


def score(net: DenoiserNet, noisy: torch.Tensor, clean: torch.Tensor) -> float:
    with torch.inference_mode():
        out = torch.cat([net(noisy[i : i + 8]) for i in range(0, len(noisy), 8)])
    return float(psnr(out.clamp(0, 1), clean).mean())


def variants(net: DenoiserNet) -> dict[str, DenoiserNet]:
    """Copies of ``net`` with one part switched off each."""
    out: dict[str, DenoiserNet] = {}
    levels = len(net.config.widths)
    for level in range(levels):
        off = copy.deepcopy(net)
        blocks = [off.bottom] if level == levels - 1 else [off.encoders[level], off.decoders[level]]
        with torch.no_grad():
            for block in blocks:
                for gain in residual_gains_of(block):
                    gain.zero_()
        out[f"level {level + 1} branches off"] = off
        if level < levels - 1:
            cut = copy.deepcopy(net)
            with torch.no_grad():
                for p in cut.ups[level].parameters():
                    p.zero_()
            out[f"below level {level + 1} cut"] = cut
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--images", default="../shared/data/vietnamese-captions/images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = split_images(list_images(args.images), "val")[: args.val_images]
    pictures, _ = load_pictures(files, 16)
    noisy, clean = validation_set(pictures, DEFAULT_MIX, args.seed)["sigma25"]
    rows: dict[str, list[float]] = {}
    for path in args.models:
        # the saved weights, not load_denoiser's inference copy (its gains are folded away)
        base = DenoiserNet(load_denoiser(path).net.config)
        load_state(base, resolve_denoiser_dir(path) / "model.safetensors")
        base.eval()
        rows.setdefault("whole model", []).append(score(base, noisy, clean))
        for name, variant in variants(base).items():
            rows.setdefault(name, []).append(score(variant.eval(), noisy, clean))
    print("| σ 25 val PSNR | " + " | ".join(str(p) for p in args.models) + " |")
    print("|---|" + "---:|" * len(args.models))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
