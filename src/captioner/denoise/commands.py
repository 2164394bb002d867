"""CLI of the denoising stage: ``captioner denoise train|apply`` and the ``--denoise`` option."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError


def add_denoise_parser(sub: Any) -> None:
    """Add ``denoise train`` and ``denoise apply`` to the top-level subparsers."""
    parser = sub.add_parser("denoise", help="train or apply the denoising network")
    actions = parser.add_subparsers(dest="denoise_command", required=True)

    p = actions.add_parser("train", help="train a denoiser on clean photos, noise added on the fly")
    p.add_argument("--images", type=Path, help="folder of clean photos (split by file name)")
    p.add_argument("--out", type=Path, required=True, help="run folder (model/, checkpoint/ ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=int, help="epochs (default 30; on resume: extend to this)")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patch-size", type=int, help="square random crops (multiple of 4)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="peak Adam rate (default 2e-3)")
    p.add_argument("--patience", type=int, help="epochs without a better val PSNR before stopping")
    p.add_argument("--val-images", type=int, help="held-out pictures scored after each epoch")
    p.add_argument("--max-images", type=int, help="use at most N training pictures")
    p.add_argument("--adam-eps", type=float, help="Adam's epsilon (1e-8)")
    p.add_argument(
        "--gain-lr-factor", type=float, help="rate of the residual gains / the others' (1)"
    )
    p.add_argument("--warmup-steps", type=int, help="linear warm-up before the cosine decay")
    p.add_argument(
        "--deep-supervision",
        type=float,
        help="weight of auxiliary L1 losses on the lower levels' outputs (default 0: none)",
    )
    p.add_argument(
        "--ema-decay", type=float, help="average of the weights that is saved (0.999; 0: none)"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        help="start no epoch after this many minutes (default: none; the result then depends "
        "on the machine's speed)",
    )
    p.add_argument(
        "--noise",
        help="corruption mix, e.g. gaussian=0.65,jpeg=0.1,salt_pepper=0.1,speckle=0.1,none=0.05",
    )
    p.add_argument("--sigma-min", type=float, help="Gaussian sigma range on the 0-255 scale")
    p.add_argument("--sigma-max", type=float)
    p.add_argument("--widths", help="channels per U-Net level (default 24,48,96,192)")
    p.add_argument("--depths", help="conv layers per level (default 2,2,3,4)")
    p.add_argument("--activation", choices=("leaky_relu", "relu"), help="default leaky_relu")
    p.add_argument(
        "--gain-init", type=float, help="starting value of each residual conv's gain (default 0)"
    )
    p.add_argument(
        "--norm",
        choices=("none", "layer"),
        help="normalisation inside each residual branch (default none; layer: per-pixel "
        "layer norm over the channels)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (on a machine shared with other jobs: 1)"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        help="autocast of the training steps (fp32; bf16 on CPU or CUDA, fp16 on CUDA)",
    )
    p.add_argument("--no-progress", action="store_true")

    p = actions.add_parser("apply", help="denoise image files or folders into --out")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", type=Path, required=True, help="denoiser folder (RUN/model)")
    p.add_argument("--out", type=Path, required=True, help="output folder (names are kept)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing input files")
    p.add_argument("--tile", type=int, default=512, help="largest tile of one forward pass")
    p.add_argument(
        "--self-ensemble",
        type=int,
        choices=(1, 2, 8),  # denoiser.SELF_ENSEMBLES, not imported: it would load torch
        default=1,
        help="average over 2 (mirror) or 8 (flips and rotations) copies: more PSNR, 2x/8x time",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def add_denoise_option(parser: argparse.ArgumentParser) -> None:
    """``--denoise CKPT`` for commands that read images (extract, caption)."""
    parser.add_argument(
        "--denoise",
        type=Path,
        metavar="CKPT",
        help="denoiser folder: run it on every image first (recorded in the feature cache)",
    )


def load_for_pipeline(path: Path | None, device: str = "cpu") -> Any | None:
    """The denoiser named by ``--denoise`` (or None), announced on stderr."""
    if path is None:
        return None
    from captioner.denoise.denoiser import load_denoiser

    denoiser = load_denoiser(path, device=device)
    print(f"denoising images first with {path} ({denoiser.weights_id[:12]})", file=sys.stderr)
    return denoiser


def run_denoise(args: argparse.Namespace) -> int:
    if args.denoise_command == "train":
        return _run_train(args)
    return _run_apply(args)


def _run_train(args: argparse.Namespace) -> int:
    from captioner.cliargs import settings_from_args
    from captioner.training.denoiser import train_denoiser
    from captioner.training.denoiser_config import DenoiseTrainConfig, resume_config

    if args.resume:
        config = resume_config(
            args.out,
            epochs=args.epochs,
            max_minutes=args.max_minutes,
            progress=not args.no_progress,
            device=args.device,
            threads=args.threads,
            precision=args.precision,
        )
    else:
        if args.images is None:
            raise CaptionerError("denoise train needs --images (a folder of clean photos)")
        config = settings_from_args(DenoiseTrainConfig, args, progress=not args.no_progress)
        for key in ("widths", "depths"):
            if getattr(args, key):
                try:
                    config.model[key] = [int(v) for v in getattr(args, key).split(",")]
                except ValueError:
                    raise CaptionerError(f"--{key}: comma-separated integers") from None
        if args.activation:
            config.model["activation"] = args.activation
        if args.gain_init is not None:
            config.model["residual_gain"] = args.gain_init
        if args.norm:
            config.model["norm"] = args.norm
    result = train_denoiser(config, resume=args.resume)
    print(
        f"best epoch {result.best_epoch} (val PSNR {result.best_val_psnr:.2f} dB) after "
        f"{result.epochs_run} epochs, {result.seconds / 60:.1f} min ({result.stopped})"
    )
    print(f"denoiser saved to {result.model_dir}")
    return 0


def _run_apply(args: argparse.Namespace) -> int:
    from captioner.denoise.apply import apply_denoiser
    from captioner.denoise.denoiser import load_denoiser

    denoiser = load_denoiser(
        args.model, device=args.device, tile=args.tile, self_ensemble=args.self_ensemble
    )
    report = apply_denoiser(
        denoiser, args.inputs, args.out, overwrite=args.overwrite, progress=not args.no_progress
    )
    for source, problem in report.failed.items():
        print(f"skipped {source}: {problem}", file=sys.stderr)
    print(f"{len(report.written)} images denoised into {args.out} in {report.seconds:.1f} s")
    return 1 if report.failed and not report.written else 0
