"""CLI of the chain: ``captioner pipeline``, ``captioner search``, ``captioner catalogue``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from captioner.cliargs import default_of
from captioner.errors import CaptionerError, CheckpointError


def add_pipeline_parsers(sub: Any) -> None:
    """Add ``pipeline``, ``search`` and ``catalogue export|page|info``."""
    from captioner.pipeline.settings import PipelineSettings as S

    def d(name: str) -> str:
        return f"(default: {default_of(S, name)})"

    p = sub.add_parser(
        "pipeline",
        help="sort, clean and caption a whole archive into a searchable catalogue",
        description="Walk INPUT files and folders; classify every image (model 1), denoise the "
        "kinds chosen for captioning (model 2) and caption them (model 3) into the SQLite "
        "catalogue DIR/catalogue.sqlite, with a review page DIR/index.html. A re-run skips "
        "what is already catalogued. Exit code 0: every file read; 1: some could not be.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files and folders")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="catalogue folder")
    p.add_argument("--classifier", type=Path, help="document-type classifier (RUN/model)")
    p.add_argument("--denoise", type=Path, metavar="CKPT", help="denoiser folder (RUN/model)")
    p.add_argument("--model", type=Path, help="captioner folder (RUN/model)")
    route = p.add_mutually_exclusive_group()
    route.add_argument(
        "--caption-kinds",
        help="comma-separated kinds to denoise and caption (default: the classifier's photos)",
    )
    route.add_argument(
        "--caption-all", action="store_true", default=None, help="caption every readable image"
    )
    p.add_argument(
        "--photo-threshold", type=float, help="P(photo) to call a photo (default: the model's)"
    )
    p.add_argument(
        "--denoise-size",
        choices=["input", "full"],
        help=f"denoise at the captioner's input resolution, or the whole image {d('denoise_size')}",
    )
    p.add_argument(
        "--save-denoised",
        action="store_true",
        default=None,
        help="write a full-resolution denoised copy of each denoised file to DIR/denoised/",
    )
    p.add_argument("--beam-size", type=int, help=f"1 = greedy {d('beam_size')}")
    p.add_argument("--greedy", action="store_true", help="same as --beam-size 1")
    p.add_argument("--max-length", type=int, help=f"{d('max_length')}")
    p.add_argument("--length-penalty", type=float, help=f"{d('length_penalty')}")
    p.add_argument(
        "--attention",
        action="store_true",
        default=None,
        help="write an attention map per captioned image to DIR/attention/",
    )
    p.add_argument(
        "--batch-size", type=int, help=f"files per batch and transaction {d('batch_size')}"
    )
    p.add_argument(
        "--forward-batch",
        type=int,
        help="images per model pass (default: 8 on a CPU, the batch size on a GPU)",
    )
    p.add_argument(
        "--workers", type=int, dest="num_workers", help=f"decoding processes {d('num_workers')}"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="process again the files whose row records an error",
    )
    p.add_argument(
        "--new-catalogue",
        action="store_true",
        help="if DIR holds a catalogue of other models or settings, keep it aside as "
        "catalogue-N.sqlite and start a new one (default: refuse)",
    )
    p.add_argument(
        "--export",
        nargs="+",
        choices=["csv", "jsonl"],
        default=[],
        help="also write DIR/catalogue.csv and/or DIR/catalogue.jsonl",
    )
    p.add_argument("--no-page", action="store_true", help="do not write DIR/index.html")
    p.add_argument("--backbone-weights", default="DEFAULT")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no line per failed file")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("search", help="full-text search over a catalogue's captions (ranked)")
    p.add_argument("query", help='free text, e.g. "dog on a beach"')
    p.add_argument("--catalogue", type=Path, required=True, metavar="DIR")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--kind", help="only rows of this kind")
    p.add_argument("--all-words", action="store_true", help="every word must match")
    p.add_argument("--json", action="store_true", help="JSON lines output")

    p = sub.add_parser("catalogue", help="export a catalogue, rewrite its page, summarise it")
    actions = p.add_subparsers(dest="catalogue_command", required=True)
    q = actions.add_parser("export", help="CSV or JSONL of every row")
    q.add_argument("catalogue", type=Path, metavar="DIR")
    q.add_argument("--format", choices=["csv", "jsonl"], required=True)
    q.add_argument("--output", type=Path, required=True)
    q.add_argument("--no-timings", action="store_true", help="JSONL without the timing columns")
    q = actions.add_parser("page", help="rewrite DIR/index.html from the catalogue")
    q.add_argument("catalogue", type=Path, metavar="DIR")
    q = actions.add_parser("info", help="models, settings and counts of a catalogue")
    q.add_argument("catalogue", type=Path, metavar="DIR")


def _settings(args: argparse.Namespace) -> Any:
    from captioner.cliargs import settings_from_args
    from captioner.pipeline.settings import PipelineSettings

    extra: dict[str, Any] = {}
    if args.caption_kinds:
        extra["caption_kinds"] = tuple(k.strip() for k in args.caption_kinds.split(",") if k)
    if args.greedy:
        extra["beam_size"] = 1
    return settings_from_args(
        PipelineSettings, argparse.Namespace(**{**vars(args), "caption_kinds": None}), **extra
    )


def load_models(args: argparse.Namespace, device: Any) -> tuple[Any, Any, Any]:
    """(classifier, denoiser, captioner) named by the arguments; the classifier shares the
    captioner's backbone when it was trained on the same one."""
    captioner = classifier = denoiser = None
    if args.model is not None:
        from captioner.caption.captioner import Captioner

        captioner = Captioner.from_pretrained(
            args.model, device=device, backbone_weights=args.backbone_weights
        )
    if args.classifier is not None:
        from captioner.doctype.classifier import DocTypeClassifier

        shared = None if captioner is None else captioner.backbone
        try:
            classifier = DocTypeClassifier.from_pretrained(
                args.classifier, device, args.backbone_weights, backbone=shared
            )
        except CheckpointError:
            if shared is None:
                raise
            classifier = DocTypeClassifier.from_pretrained(
                args.classifier, device, args.backbone_weights
            )
    if args.denoise is not None:
        from captioner.denoise.denoiser import load_denoiser

        denoiser = load_denoiser(args.denoise, device=device)
    if classifier is None and captioner is None:
        raise CaptionerError("give --classifier, --model (the captioner), or both")
    return classifier, denoiser, captioner


def run_pipeline(args: argparse.Namespace) -> int:
    import torch

    from captioner.pipeline.chain import Pipeline
    from captioner.pipeline.run import describe, run_archive
    from captioner.runtime import distributed

    settings = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        from captioner.runtime import resolve_device

        args.device = str(resolve_device("auto"))
    ctx, device = distributed.setup(torch.device(args.device))
    try:
        classifier, denoiser, captioner = load_models(args, device)
        if denoiser is not None and captioner is None and not settings.save_denoised:
            print("note: no captioner and no --save-denoised: nothing is denoised", file=sys.stderr)
        pipeline = Pipeline(classifier, denoiser, captioner, settings, device)
        if ctx.is_main:
            for note in pipeline.notes():
                print(f"note: {note}", file=sys.stderr)
            if classifier is not None and captioner is not None:
                shared = "shared" if pipeline.shares_backbone else "not shared (different)"
                print(f"backbone: {shared} by the classifier and the captioner", file=sys.stderr)

        def report(result: Any) -> None:
            if args.quiet or not ctx.is_main:
                return
            if result.error is not None:
                print(f"failed {result.path}: {result.error}", file=sys.stderr)
            elif result.note is not None:
                print(f"not walked {result.path}: {result.note}", file=sys.stderr)

        summary = run_archive(
            pipeline,
            args.inputs,
            args.out,
            new_catalogue=args.new_catalogue,
            page=not args.no_page,
            exports=args.export,
            progress=not args.no_progress,
            on_result=report,
        )
    finally:
        distributed.teardown(ctx)
    if not ctx.is_main:
        return 0 if summary.ok else 1
    if summary.set_aside is not None:
        print(f"the previous catalogue was kept as {summary.set_aside}", file=sys.stderr)
    print(describe(summary, ctx))
    print(f"catalogue: {args.out / 'catalogue.sqlite'}")
    if summary.page is not None:
        print(f"review page: {summary.page}")
    for path in summary.exports:
        print(f"export: {path}")
    return 0 if summary.ok else 1


def run_search(args: argparse.Namespace) -> int:
    from captioner.pipeline.catalogue import Catalogue

    with Catalogue.open(args.catalogue, readonly=True) as catalogue:
        hits = catalogue.search(args.query, args.limit, args.kind, args.all_words)
    for hit in hits:
        if args.json:
            print(json.dumps(hit.__dict__, ensure_ascii=False))
        else:
            print(f"{hit.rank:3d}  {hit.score:6.2f}  {hit.path}\t{hit.caption}")
    if not hits:
        print(f"no caption matches {args.query!r}", file=sys.stderr)
    return 0


def run_catalogue(args: argparse.Namespace) -> int:
    from captioner.pipeline.catalogue import Catalogue

    if args.catalogue_command == "export":
        with Catalogue.open(args.catalogue, readonly=True) as catalogue:
            if args.format == "csv":
                count = catalogue.export_csv(args.output)
            else:
                count = catalogue.export_jsonl(args.output, timings=not args.no_timings)
        print(f"{count} rows written to {args.output}")
    elif args.catalogue_command == "page":
        from captioner.pipeline.page import write_review_page

        with Catalogue.open(args.catalogue, readonly=True) as catalogue:
            page = write_review_page(catalogue, catalogue.path.parent)
        print(f"review page: {page}")
    else:
        with Catalogue.open(args.catalogue, readonly=True) as catalogue:
            print(json.dumps(catalogue.signature, indent=2))
            total = catalogue.count()
            failed = catalogue.count("WHERE error IS NOT NULL")
            captioned = catalogue.count("WHERE captioned = 1")
            kinds = catalogue.db.execute(
                "SELECT kind, COUNT(*) FROM files WHERE kind IS NOT NULL GROUP BY kind "
                "ORDER BY kind"
            ).fetchall()
            print(f"{total} rows, {captioned} captioned, {failed} with an error")
            print("kinds: " + ", ".join(f"{k} {n}" for k, n in kinds))
    return 0
