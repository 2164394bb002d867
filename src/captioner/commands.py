"""One function per CLI command: turn parsed arguments into library calls and print results."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from captioner.errors import CaptionerError


def run_prepare(args: argparse.Namespace) -> int:
    from captioner.data.prepare import format_summary, prepare_dataset

    manifest = prepare_dataset(
        args.annotations,
        args.images,
        fmt=args.format,
        max_images=args.max_images,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        restval_to_train=not args.keep_restval,
    )
    manifest.save(args.out)
    print(format_summary(manifest))
    print(f"manifest written to {args.out}")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from captioner.data.manifest import Manifest
    from captioner.denoise.commands import load_for_pipeline
    from captioner.features.extract import extract_manifest
    from captioner.runtime import resolve_device
    from captioner.runtime.distributed import is_main_process

    manifest = Manifest.load(args.manifest)
    splits = args.splits.split(",") if args.splits else None
    denoiser = load_for_pipeline(args.denoise)
    reports = extract_manifest(
        manifest,
        args.out,
        backbone_name=args.backbone,
        weights=args.weights,
        splits=splits,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=str(resolve_device(args.device)),
        progress=not args.no_progress,
        image_transform=denoiser,
        extra_header={"image_transform": f"denoiser-{denoiser.weights_id}" if denoiser else None},
    )
    if not is_main_process():  # torchrun: rank 0 reports for all ranks
        return 0
    failed_total = 0
    for split, report in reports.items():
        failed_total += len(report.failed)
        print(
            f"{split}: {report.total} images, {report.extracted_now} extracted now, "
            f"{report.already_done} already done, {len(report.failed)} failed"
        )
        for key, problem in list(report.failed.items())[:10]:
            print(f"  skipped {key}: {problem}")
        if len(report.failed) > 10:
            print(
                f"  ... and {len(report.failed) - 10} more (see {args.out / split}/failures.json)"
            )
    print(f"features written to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from captioner.runtime.distributed import is_main_process
    from captioner.training.config import TrainConfig
    from captioner.training.trainer import train

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    overrides = [
        f"{k}={v}"
        for k, v in (
            ("manifest", args.manifest),
            ("features", args.features),
            ("out", args.out),
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("learning_rate", args.learning_rate),
            ("patience", args.patience),
            ("seed", args.seed),
            ("device", args.device),
            ("precision", args.precision),
            ("compile", "true" if args.compile else None),
        )
        if v is not None
    ]
    if args.no_progress:
        overrides.append("progress=false")
    config = config.override(overrides + list(args.set))
    if not config.manifest or not config.features:
        raise CaptionerError("train needs --manifest and --features (or both in --config)")
    result = train(config, resume=args.resume)
    if not is_main_process():  # torchrun: rank 0 reports
        return 0
    print(
        f"best epoch {result.best_epoch} ({result.select_on} {result.best_score:.4f}) after "
        f"{result.epochs_run} epochs{' (early stop)' if result.stopped_early else ''}"
    )
    print(f"model saved to {result.model_dir}")
    return 0


def run_scst(args: argparse.Namespace) -> int:
    from captioner.training.scst import ScstConfig, finetune

    config = ScstConfig(
        model=str(args.model),
        manifest=str(args.manifest),
        features=str(args.features),
        out=str(args.out),
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        samples=args.samples,
        batch_images=args.batch_images,
        max_length=args.max_length,
        select_on=args.select_on,
        eval_beam_size=args.eval_beam_size,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    result = finetune(config, resume=args.resume)
    start = "the starting model was kept" if result.best_epoch == 0 else "best epoch"
    print(f"{start} {result.best_epoch} (val {config.select_on} {result.best_score:.2f})")
    print(f"model saved to {result.model_dir}")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from captioner.denoise.commands import load_for_pipeline
    from captioner.model.captioner import Captioner, image_transform_note
    from captioner.model.decoding import DecodeSettings
    from captioner.runtime import resolve_device
    from captioner.vision.images import expand_image_paths

    images = expand_image_paths(args.inputs)
    device = resolve_device(args.device)
    denoiser = load_for_pipeline(args.denoise, device=str(device))
    captioner = Captioner.from_pretrained(
        args.model, device=device, backbone_weights=args.backbone_weights
    )
    note = image_transform_note(
        captioner.info.get("image_transform"),
        f"denoiser-{denoiser.weights_id}" if denoiser is not None else None,
        "these are captioned from",
    )
    if note:
        print(f"note: {note}", file=sys.stderr)
    decode = DecodeSettings(
        beam_size=1 if args.greedy else args.beam_size,
        max_length=args.max_length,
        sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        length_penalty=args.length_penalty,
    )
    results = captioner.caption(
        images, decode, batch_size=args.batch_size, image_transform=denoiser, skip_errors=True
    )
    if args.json:
        text = json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False) + "\n"
    elif args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "caption", "log_prob", "error"])
        for r in results:
            writer.writerow([r.source, r.caption, f"{r.log_prob:.4f}", r.error or ""])
        text = buffer.getvalue()
    else:
        text = "".join(
            f"{r.source}\t{r.caption if r.error is None else 'ERROR: ' + r.error}\n"
            for r in results
        )
    if args.output:
        from captioner.fileio import atomic_write_bytes

        atomic_write_bytes(args.output, text.encode("utf-8"))  # never a half-written file
    else:
        sys.stdout.write(text)
    if args.attention_dir:
        from captioner.viz import write_attention_maps

        write_attention_maps(results, args.attention_dir)
        print(f"attention maps written to {args.attention_dir}", file=sys.stderr)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"skipped {r.error}", file=sys.stderr)
    return 1 if failed and len(failed) == len(results) else 0


def run_evaluate(args: argparse.Namespace) -> int:
    import time

    from captioner.data.manifest import Manifest
    from captioner.evaluation import caption_split
    from captioner.fileio import atomic_write_json
    from captioner.metrics import compute_metrics, format_table
    from captioner.model.captioner import Captioner, DecodeSettings
    from captioner.runtime import resolve_device

    started = time.perf_counter()
    captioner = Captioner.from_pretrained_ensemble(
        args.model, device=resolve_device(args.device), backbone_weights=None
    )
    manifest = Manifest.load(args.manifest)
    if args.split not in manifest.split_names():
        raise CaptionerError(
            f"{args.manifest}: no split {args.split!r} (has {', '.join(manifest.split_names())})"
        )
    decode = DecodeSettings(
        beam_size=args.beam_size, max_length=args.max_length, length_penalty=args.length_penalty
    )
    split = caption_split(
        captioner,
        manifest,
        args.features,
        args.split,
        decode,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    hyps = {key: result.caption for key, result in split.results.items()}
    report = compute_metrics(split.references, hyps, use_java=False if args.no_java else None)
    seconds = time.perf_counter() - started
    print(
        f"{args.split} split of {args.manifest}: {report.num_images} images, "
        f"{decode.describe()}, tokenizer {report.tokenizer}"
    )
    print(format_table(report))
    for note in report.skipped:
        print(f"note: {note}")
    for note in split.notes:
        print(f"note: {note}")
    if split.skipped:
        print(f"note: {len(split.skipped)} images without features were not evaluated")
    if args.output:
        atomic_write_json(
            args.output,
            {
                "scores": report.scores,
                "tokenizer": report.tokenizer,
                "skipped_metrics": report.skipped,
                "num_images": report.num_images,
                "images_without_features": split.skipped,
                "notes": split.notes,
                "split": args.split,
                "manifest": str(args.manifest),
                "model": [str(m) for m in args.model],
                "model_info": captioner.info,
                "decoding": {
                    "beam_size": decode.beam_size,
                    "max_length": decode.max_length,
                    "length_penalty": decode.length_penalty,
                },
                "seconds": round(seconds, 2),
                "captions": {
                    k: {
                        "generated": hyps[k],
                        "references": split.references[k],
                        **report.per_image.get(k, {}),
                    }
                    for k in hyps
                },
            },
        )
        print(f"report written to {args.output}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from captioner.training.sweep import SweepSpec, run_sweep

    spec = SweepSpec.from_yaml(args.spec)
    run_sweep(spec, progress=not args.no_progress)
    print((spec.out / "sweep.md").read_text(encoding="utf-8"))
    print(f"comparison written to {spec.out / 'sweep.md'} and {spec.out / 'sweep.json'}")
    print(f"side by side: tensorboard --logdir {spec.out}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from captioner.data.manifest import Manifest
    from captioner.model.captioner import Captioner, DecodeSettings
    from captioner.report import write_report
    from captioner.runtime import resolve_device

    captioner = Captioner.from_pretrained_ensemble(
        args.model, device=resolve_device(args.device), backbone_weights=None
    )
    page = write_report(
        captioner,
        Manifest.load(args.manifest),
        args.features,
        args.split,
        args.out,
        DecodeSettings(beam_size=args.beam_size, max_length=args.max_length),
        attention=not args.no_attention,
        use_java=False if args.no_java else None,
        progress=not args.no_progress,
    )
    print(f"report written to {page}")
    return 0


def run_denoise(args: argparse.Namespace) -> int:
    from captioner.denoise.commands import run_denoise

    return run_denoise(args)


def run_serve(args: argparse.Namespace) -> int:
    from captioner.serve.run import serve

    return serve(args)


def run_demo(args: argparse.Namespace) -> int:
    from captioner.demo.pipeline import run_demo as demo

    demo(
        out=args.out,
        num_images=args.images,
        epochs=args.epochs,
        weights=args.weights,
        seed=args.seed,
        progress=not args.no_progress,
        chain=not args.no_chain,
    )
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from captioner.doctype.commands import run_classify

    return run_classify(args)


def run_pipeline(args: argparse.Namespace) -> int:
    from captioner.pipeline.commands import run_pipeline

    return run_pipeline(args)


def run_search(args: argparse.Namespace) -> int:
    from captioner.pipeline.commands import run_search

    return run_search(args)


def run_catalogue(args: argparse.Namespace) -> int:
    from captioner.pipeline.commands import run_catalogue

    return run_catalogue(args)
