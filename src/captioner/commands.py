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
    from captioner.vision.views import parse_views

    backbone, weights, image_size = args.backbone, args.weights, args.image_size
    if args.model is not None:
        from captioner.caption.captioner import backbone_of

        given = [f"--{o}" for o, v in (("backbone", backbone), ("weights", weights)) if v]
        given += ["--image-size"] if image_size else []
        if given:
            raise CaptionerError(f"--model says which backbone to use: drop {', '.join(given)}")
        backbone, weights, image_size = backbone_of(args.model)
    manifest = Manifest.load(args.manifest)
    splits = args.splits.split(",") if args.splits else None
    denoiser = load_for_pipeline(args.denoise)
    reports = extract_manifest(
        manifest,
        args.out,
        backbone_name=backbone or "mobilenet_v2",
        weights=weights or "DEFAULT",
        splits=splits,
        image_size=image_size,
        views=parse_views(args.views) if args.views else (),
        top_blocks=args.top_blocks,
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
    from dataclasses import replace

    from captioner.cliargs import given_fields
    from captioner.runtime.distributed import is_main_process
    from captioner.training.config import TrainConfig
    from captioner.training.trainer import train

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    given = given_fields(TrainConfig, args)  # typed options; --set strings are read by type
    if args.no_progress:
        given["progress"] = False
    config = replace(config, **given).override(list(args.set))
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
    from captioner.cliargs import settings_from_args
    from captioner.training.scst import ScstConfig, finetune

    config = settings_from_args(ScstConfig, args, progress=not args.no_progress)
    result = finetune(config, resume=args.resume)
    start = "the starting model was kept" if result.best_epoch == 0 else "best epoch"
    print(f"{start} {result.best_epoch} (val {config.select_on} {result.best_score:.2f})")
    print(f"model saved to {result.model_dir}")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from captioner.caption.captioner import Captioner, image_transform_note
    from captioner.caption.decode_settings import DecodeSettings
    from captioner.denoise.commands import load_for_pipeline
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
    from captioner.caption.decode_settings import DecodeSettings
    from captioner.evaluation.metrics import format_table
    from captioner.evaluation.split import evaluate_split
    from captioner.fileio import atomic_write_json
    from captioner.runtime import resolve_device

    decode = DecodeSettings(
        beam_size=args.beam_size, max_length=args.max_length, length_penalty=args.length_penalty
    )
    report = evaluate_split(
        args.model,
        args.manifest,
        args.features,
        args.split,
        decode,
        batch_size=args.batch_size,
        use_java=False if args.no_java else None,
        device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    metrics, captions = report.metrics, report.captions
    print(
        f"{args.split} split of {args.manifest}: {metrics.num_images} images, "
        f"{decode.describe()}, tokenizer {metrics.tokenizer}"
    )
    print(format_table(metrics))
    for note in [*metrics.skipped, *captions.notes]:
        print(f"note: {note}")
    if captions.skipped:
        print(f"note: {len(captions.skipped)} images without features were not evaluated")
    if args.output:
        atomic_write_json(args.output, report.to_dict())
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
    from captioner.caption.captioner import Captioner
    from captioner.caption.decode_settings import DecodeSettings
    from captioner.data.manifest import Manifest
    from captioner.evaluation.report import write_report
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
    from captioner.cliargs import given_fields, settings_from_args
    from captioner.serve.modelinfo import read_metrics
    from captioner.serve.run import ServeLaunch, serve
    from captioner.serve.schemas import ServeSettings

    limits = given_fields(ServeSettings, args)
    if args.max_upload_mb is not None:
        limits["max_upload_bytes"] = int(args.max_upload_mb * 2**20)
    if args.metrics:
        limits["metrics"] = read_metrics(args.metrics)
    return serve(settings_from_args(ServeLaunch, args), ServeSettings(**limits, warm_up=True))


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
