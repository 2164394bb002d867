"""Command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from captioner import __version__
from captioner.caption.decode_settings import DecodeSettings
from captioner.cliargs import default_of
from captioner.denoise.commands import add_denoise_option, add_denoise_parser
from captioner.doctype.commands import add_classify_parser
from captioner.errors import CaptionerError
from captioner.pipeline.commands import add_pipeline_parsers
from captioner.training.scst_config import ScstConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captioner", description="Show, Attend and Tell image captioning."
    )
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read annotations and write a dataset manifest")
    p.add_argument(
        "annotations", type=Path, help="COCO/Karpathy json, Flickr token file, CSV or JSONL"
    )
    p.add_argument(
        "--images", type=Path, required=True, help="folder the image names are relative to"
    )
    p.add_argument("--out", type=Path, required=True, help="manifest file to write (JSON)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "coco", "karpathy", "flickr", "csv", "jsonl"]
    )
    p.add_argument("--max-images", type=int, default=None, help="keep the first N usable images")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the split by image")
    p.add_argument(
        "--keep-restval",
        action="store_true",
        help="keep Karpathy 'restval' as its own split instead of adding it to train",
    )

    p = sub.add_parser("extract", help="run a pretrained CNN over the images; cache the features")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="feature folder (one cache per split)")
    p.add_argument("--backbone", help="CNN name (default: mobilenet_v2)")
    p.add_argument("--weights", help="DEFAULT (the default), none, or a weights file")
    p.add_argument(
        "--model",
        type=Path,
        help="extract with the backbone a trained model reads (its name, input size and, when "
        "fine-tuned, its own weights): the features `evaluate`/`scst` need for that model",
    )
    p.add_argument(
        "--top-blocks",
        type=int,
        default=0,
        help="cache the map before the backbone's last N blocks instead of its final grid: "
        "the input of `train --fine-tune-blocks N`",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="square input side in px (default: the backbone's, e.g. 224; 448 gives "
        "MobileNetV2 a 14x14 grid)",
    )
    p.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    p.add_argument(
        "--views",
        help="also cache the train split flipped/turned, e.g. hflip,rot90 or dihedral (all 7): "
        "augmentation for `train --set views=[...]` (aerial photos; not for 'left of' captions)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    add_denoise_option(p)

    p = sub.add_parser("train", help="train the attention decoder on cached features")
    p.add_argument("--manifest", type=Path, help="manifest written by `prepare`")
    p.add_argument("--features", type=Path, help="feature folder written by `extract`")
    p.add_argument("--out", type=Path, help="run folder (model/, checkpoint/, tensorboard/...)")
    p.add_argument("--config", type=Path, help="YAML file of training settings")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="autocast precision (bf16 on CPU or CUDA; fp16 on CUDA with loss scaling; auto: "
        "bf16 where the device runs it natively, else fp32 on CPU / fp16 on CUDA)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the decoder's training forward (falls back to eager on failure)",
    )
    p.add_argument(
        "--fine-tune-blocks",
        type=int,
        help="train the backbone's last N blocks with the decoder, on the maps of "
        "`extract --top-blocks N` (default: 0, frozen backbone)",
    )
    p.add_argument(
        "--backbone-lr",
        type=float,
        dest="backbone_learning_rate",
        help="learning rate of the fine-tuned blocks (default: 1e-4)",
    )
    p.add_argument(
        "--fine-tune-after",
        type=int,
        help="epochs of decoder-only training before the blocks train too (default: 0)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override any training setting, e.g. --set model.dropout=0.3 attention_lambda=1",
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "scst", help="fine-tune a trained model on CIDEr-D (self-critical sequence training)"
    )
    p.add_argument("--model", type=Path, required=True, help="trained model folder (RUN/model)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder (model/, checkpoint/...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=int, help=_default(ScstConfig, "epochs"))
    p.add_argument(
        "--lr", type=float, dest="learning_rate", help=_default(ScstConfig, "learning_rate")
    )
    p.add_argument(
        "--samples", type=int, help="captions sampled per image " + _default(ScstConfig, "samples")
    )
    p.add_argument("--batch-images", type=int, help=_default(ScstConfig, "batch_images"))
    p.add_argument("--max-length", type=int, help=_default(ScstConfig, "max_length"))
    p.add_argument(
        "--select-on", choices=["CIDEr", "BLEU-4"], help=_default(ScstConfig, "select_on")
    )
    p.add_argument("--eval-beam-size", type=int, help=_default(ScstConfig, "eval_beam_size"))
    p.add_argument("--patience", type=int, help=_default(ScstConfig, "patience"))
    p.add_argument("--seed", type=int, help=_default(ScstConfig, "seed"))
    p.add_argument("--device", help=_default(ScstConfig, "device"))
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("caption", help="caption images or folders of images")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", type=Path, required=True, help="model folder (e.g. RUN/model)")
    p.add_argument("--beam-size", type=int, default=DecodeSettings.beam_size, help="1 = greedy")
    p.add_argument("--greedy", action="store_true", help="same as --beam-size 1")
    p.add_argument("--sample", action="store_true", help="sample words instead of searching")
    p.add_argument("--temperature", type=float, default=DecodeSettings.temperature)
    p.add_argument("--top-k", type=int, default=DecodeSettings.top_k)
    p.add_argument("--seed", type=int, default=None, help="seed for --sample")
    p.add_argument("--max-length", type=int, default=DecodeSettings.max_length)
    p.add_argument("--length-penalty", type=float, default=DecodeSettings.length_penalty)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backbone-weights", default="DEFAULT")
    add_denoise_option(p)
    p.add_argument("--device", default="auto")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")
    p.add_argument("--output", type=Path, help="write the output to this file instead of stdout")
    p.add_argument("--attention-dir", type=Path, help="write one attention PNG per image here")

    p = sub.add_parser("evaluate", help="BLEU/METEOR/ROUGE-L/CIDEr of a model on a split")
    add_model_folders(p)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument(
        "--features",
        type=Path,
        nargs="+",
        required=True,
        help="feature folder of `extract`; or one per --model, for an ensemble of models "
        "fine-tuned separately (each folder from `extract --model` of its model)",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=int, default=DecodeSettings.beam_size, help="1 = greedy")
    p.add_argument("--max-length", type=int, default=DecodeSettings.max_length)
    p.add_argument("--length-penalty", type=float, default=DecodeSettings.length_penalty)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-java", action="store_true", help="pure-Python scorer (no METEOR)")
    p.add_argument("--output", type=Path, help="JSON report (scores, settings, captions)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("sweep", help="train a grid of settings and compare them in one table")
    p.add_argument("spec", type=Path, help="sweep YAML (base config, data, out, grid)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "report", help="HTML page of a split: captions, references, scores, attention maps"
    )
    add_model_folders(p)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="feature folder of `extract`")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True, help="report folder (index.html, ...)")
    p.add_argument("--beam-size", type=int, default=DecodeSettings.beam_size, help="1 = greedy")
    p.add_argument("--max-length", type=int, default=DecodeSettings.max_length)
    p.add_argument("--no-attention", action="store_true", help="skip the attention maps")
    p.add_argument("--no-java", action="store_true", help="pure-Python scorer")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("demo", help="the embedded default: shapes dataset, end to end")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--images", type=int, default=1200, help="number of generated scenes")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--weights", default="DEFAULT", help="MobileNetV2 weights (DEFAULT: offline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-chain",
        action="store_true",
        help="skip the last step: the whole chain (sort, clean, caption) over stand-ins",
    )
    p.add_argument("--no-progress", action="store_true")

    add_denoise_parser(sub)
    add_classify_parser(sub)
    add_pipeline_parsers(sub)

    p = sub.add_parser("serve", help="HTTP API and web page (FastAPI + uvicorn)")
    p.add_argument("--model", type=Path, required=True, help="model folder (e.g. RUN/model)")
    p.add_argument("--denoise", type=Path, metavar="CKPT", help="denoiser offered to requests")
    p.add_argument(
        "--classifier",
        type=Path,
        metavar="DIR",
        help="document-type classifier (classify train): uploads that are not photos are "
        "said to be so instead of captioned (requests may ask to caption them anyway)",
    )
    p.add_argument(
        "--catalogue",
        type=Path,
        metavar="DIR",
        help="a `captioner pipeline` output folder: the page and GET /v1/search search its "
        "captions",
    )
    # Defaults: ServeLaunch (serve/run.py) and ServeSettings (serve/schemas.py).
    p.add_argument("--host", help="(default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="(default: 8000)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default ≤ 4)")
    p.add_argument("--backbone-weights", help="(default: DEFAULT)")
    p.add_argument("--device", help="(default: auto)")
    p.add_argument("--max-upload-mb", type=float, help="per image file (default: 10)")
    p.add_argument("--max-images", type=int, help="images per request (default: 8)")
    p.add_argument("--max-queue", type=int, help="waiting requests before 503 (default: 64)")
    p.add_argument("--max-batch", type=int, help="images per model call (default: 8)")
    p.add_argument("--metrics", type=Path, help="JSON report shown by /v1/model")
    p.add_argument("--log-level", help="uvicorn's (default: info)")
    return parser


def _default(cls: type, name: str) -> str:
    return f"(default: {default_of(cls, name)})"


def add_model_folders(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        nargs="+",
        required=True,
        help="model folder (e.g. RUN/model); several: an ensemble averaging their words",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from captioner import commands

    handler = getattr(commands, f"run_{args.command}")
    try:
        return int(handler(args) or 0)
    except CaptionerError as exc:
        print(f"captioner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"captioner {args.command}: interrupted", file=sys.stderr)
        return 130


def entry_point() -> NoReturn:
    """The ``captioner`` command: ``main``, then exit with its code."""
    code = main()
    distributed = sys.modules.get("captioner.runtime.distributed")
    if distributed is not None and distributed.group_ended():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # see distributed.group_ended: skip the finalization that can abort
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
