"""CLI of model 1: ``captioner classify train|evaluate|apply``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from captioner.cliargs import default_of
from captioner.errors import CaptionerError


def add_classify_parser(sub: Any) -> None:
    """Add ``classify train``, ``classify evaluate`` and ``classify apply``."""
    from captioner.training.classifier_config import ClassifierTrainConfig as C

    def d(name: str) -> str:
        return f"(default: {default_of(C, name)})"

    parser = sub.add_parser(
        "classify", help="model 1: sort images into photo, painting, schematic, sketch, text"
    )
    actions = parser.add_subparsers(dest="classify_command", required=True)

    p = actions.add_parser("train", help="train the document-type classifier")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="SOURCE",
        help="ROOT with one folder per class, LABEL=DIR (every image under DIR is LABEL), "
        "or a CSV/JSONL of image,label[,group]",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (model/, checkpoint/ ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--features",
        help="folder of the pooled-feature caches (default: OUT/features); runs over the same "
        "images (other seeds, splits or head settings) can share it",
    )
    p.add_argument("--backbone", help=f"backbone from vision/ {d('backbone')}")
    p.add_argument("--weights", help=f"backbone weights: DEFAULT, none or a file {d('weights')}")
    p.add_argument(
        "--image-size",
        type=int,
        help="square input side in px (default: the backbone's, 224 for MobileNetV2; smaller "
        "is faster, and the classifier then no longer shares the captioner's backbone pass)",
    )
    p.add_argument(
        "--style-blocks",
        help="inner backbone blocks whose per-channel mean and std the head reads beside the "
        "pooled features: auto (MobileNetV2: 3,6,10,13,16), none, or numbers like 3,6,10 "
        f"{d('style_blocks')}",
    )
    p.add_argument("--split-by", choices=["group", "random"], help=f"{d('split_by')}")
    p.add_argument(
        "--val-fraction",
        type=float,
        help=f"share for early stopping and calibration {d('val_fraction')}",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        help=f"held-out share (unseen sources with --split-by group) {d('test_fraction')}",
    )
    p.add_argument(
        "--group-pattern",
        help="regex whose first group is an image's source, read from its file name "
        "(default: the prefix before -NNN / _NNN; else the folder)",
    )
    p.add_argument(
        "--max-per-group", type=int, help=f"images kept per class and source {d('max_per_group')}"
    )
    p.add_argument("--views", type=int, help=f"scan-augmented views per image {d('views')}")
    p.add_argument(
        "--synthetic",
        type=int,
        help="drawn charts, diagrams and printed pages added to Schematics and Text, per "
        f"generator, in training only (0: none) {d('synthetic')}",
    )
    p.add_argument("--epochs", type=int, help=f"{d('epochs')}")
    p.add_argument("--patience", type=int, help=f"{d('patience')}")
    p.add_argument(
        "--balance",
        choices=["class", "source"],
        help="loss weights: every class equal, or every source inside its class too "
        f"{d('balance')}",
    )
    p.add_argument("--batch-size", type=int, help=f"{d('batch_size')}")
    p.add_argument("--lr", type=float, dest="learning_rate", help=f"{d('learning_rate')}")
    p.add_argument("--weight-decay", type=float, help=f"{d('weight_decay')}")
    p.add_argument("--dropout", type=float, help=f"{d('dropout')}")
    p.add_argument("--photo-class", help=f"the class the chain captions {d('photo_class')}")
    p.add_argument(
        "--photo-threshold", type=float, help=f"P(photo) to call a photo {d('photo_threshold')}"
    )
    p.add_argument("--noise-sigma", type=float, help=f"noisy validation view {d('noise_sigma')}")
    p.add_argument(
        "--fine-tune-blocks",
        type=int,
        help="then fine-tune the backbone's last N blocks with the head, on cached maps "
        f"{d('fine_tune_blocks')}",
    )
    p.add_argument(
        "--fine-tune-views",
        type=int,
        help=f"scan-augmented views besides the clean image in that phase {d('fine_tune_views')}",
    )
    p.add_argument("--fine-tune-epochs", type=int, help=f"{d('fine_tune_epochs')}")
    p.add_argument(
        "--backbone-lr",
        type=float,
        dest="backbone_learning_rate",
        help=f"the fine-tuned blocks' learning rate {d('backbone_learning_rate')}",
    )
    p.add_argument("--seed", type=int, help=f"split, views and initialisation {d('seed')}")
    p.add_argument("--workers", type=int, help=f"image-decoding processes {d('workers')}")
    p.add_argument("--device", help=f"{d('device')}")
    p.add_argument("--no-progress", action="store_true")

    p = actions.add_parser("evaluate", help="accuracy, F1, photo-vs-rest, clean and noisy")
    p.add_argument("--model", type=Path, required=True, help="classifier folder (RUN/model)")
    p.add_argument("--data", nargs="+", metavar="SOURCE", help="labelled sources (as in train)")
    p.add_argument(
        "--split-file", type=Path, help="a run's data.json (its split is used with --split)"
    )
    p.add_argument("--split", default="test", help="split of --split-file (default: test)")
    p.add_argument("--noise", type=float, nargs="*", default=[25.0], help="Gaussian sigmas")
    p.add_argument("--out", type=Path, help="report folder (report.json, PNGs, mistakes.html)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone-weights", default="DEFAULT")
    p.add_argument("--no-progress", action="store_true")

    p = actions.add_parser("apply", help="kind and probabilities of each image; sort files")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", type=Path, required=True, help="classifier folder (RUN/model)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON lines output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")
    p.add_argument("--output", type=Path, help="write the output to this file instead of stdout")
    sort = p.add_mutually_exclusive_group()
    sort.add_argument("--copy-to", type=Path, help="copy each file into DIR/<kind>/")
    sort.add_argument("--move-to", type=Path, help="move each file into DIR/<kind>/")
    p.add_argument(
        "--photo-threshold", type=float, help="P(photo) to call a photo (default: the model's)"
    )
    p.add_argument("--recursive", action="store_true", help="walk folders recursively")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone-weights", default="DEFAULT")
    p.add_argument("--no-progress", action="store_true")


def run_classify(args: argparse.Namespace) -> int:
    handler = {"train": _train, "evaluate": _evaluate, "apply": _apply}[args.classify_command]
    return handler(args)


def _train(args: argparse.Namespace) -> int:
    from captioner.cliargs import given_fields, settings_from_args
    from captioner.data.labelled import describe
    from captioner.doctype.metrics import format_report
    from captioner.training.classifier import train_classifier
    from captioner.training.classifier_config import ClassifierTrainConfig

    given = {"out": str(args.out), "progress": not args.no_progress}
    config = settings_from_args(ClassifierTrainConfig, args, **given)
    if args.resume and args.data is None:
        saved = _saved_config(args.out)
        config = ClassifierTrainConfig(
            **{**saved, **given_fields(ClassifierTrainConfig, args), **given}
        )
    result = train_classifier(config, resume=args.resume)
    print(describe(result.data))
    print(
        f"best epoch {result.best_epoch} of {result.epochs_run} ({result.stopped}), "
        f"temperature {result.temperature:.3f}, {result.seconds:.0f} s"
    )
    for split, conditions in result.reports.items():
        for condition, report in conditions.items():
            print(format_report(report, f"{split}, {condition.replace('_', ' sigma ')}"))
    print(f"model written to {result.model_dir}")
    return 0


def _saved_config(out: Path) -> dict[str, Any]:
    path = Path(out) / "train_config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptionerError(f"{out}: nothing to resume (no train_config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionerError(f"{path}: unreadable settings ({exc})") from None
    if not isinstance(saved, dict):
        raise CaptionerError(f"{path}: unreadable settings (not a JSON object)")
    return saved


def _load(args: argparse.Namespace) -> Any:
    from captioner.doctype.classifier import DocTypeClassifier

    return DocTypeClassifier.from_pretrained(
        args.model, device=args.device, backbone_weights=args.backbone_weights
    )


def _evaluate(args: argparse.Namespace) -> int:
    from captioner.data.labelled import LabelledSet, read_sources
    from captioner.doctype.evaluate import evaluate_classifier, write_evaluation
    from captioner.doctype.metrics import format_report

    if (args.data is None) == (args.split_file is None):
        raise CaptionerError("give either --data SOURCE... or --split-file RUN/data.json")
    classifier = _load(args)
    if args.split_file is not None:
        items = LabelledSet.load(args.split_file).split(args.split)
        where = f"{args.split_file} ({args.split})"
    else:
        data = read_sources(args.data, max_per_group=None)
        items, where = data.images, ", ".join(args.data)
        for reason, skipped in data.skipped.items():
            print(f"skipped {len(skipped)} ({reason.replace('_', ' ')})", file=sys.stderr)
    evaluation = evaluate_classifier(
        classifier,
        items,
        tuple(args.noise),
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    for name, report in evaluation.reports.items():
        print(format_report(report, f"{where}, {name.replace('_', ' ')}"))
    for path, problem in list(evaluation.skipped.items())[:10]:
        print(f"  skipped {path}: {problem}")
    if args.out is not None:
        summary = {"model": str(args.model), "data": where, "weights": classifier.weights_id}
        write_evaluation(evaluation, args.out, summary)
        print(f"report written to {args.out} (report.json, confusion_*.png, mistakes.html)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from captioner.doctype.apply import sort_file
    from captioner.fileio import atomic_write_bytes
    from captioner.vision.images import expand_image_paths

    classifier = _load(args)
    if args.photo_threshold is not None:
        if not 0.0 <= args.photo_threshold <= 1.0:
            raise CaptionerError(f"--photo-threshold {args.photo_threshold}: must be in [0, 1]")
        classifier.config.photo_threshold = args.photo_threshold
    paths = _expand(args.inputs, args.recursive, expand_image_paths)
    target = args.copy_to or args.move_to
    rows: list[dict[str, Any]] = []
    failed = 0
    stream = io.StringIO()
    for path, prediction, problem in classifier.classify_paths(
        paths, args.batch_size, args.workers, progress=not args.no_progress
    ):
        row: dict[str, Any] = {"path": str(path)}
        if prediction is None:
            failed += 1
            row["error"] = problem
            print(f"skipped {path}: {problem}", file=sys.stderr)
        else:
            row.update(prediction.to_dict())
            if target is not None:
                placed, done = sort_file(
                    path, target / prediction.kind, move=args.move_to is not None
                )
                row["sorted_to"] = str(placed)
                row["already_sorted"] = not done
        rows.append(row)
        if not args.json and not args.csv and args.output is None and prediction is not None:
            print(f"{path}\t{prediction.describe()}", flush=True)
    if args.json:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif args.csv:
        names = ["path", "kind", "probability", "is_photo", "photo_probability"]
        names += [f"p_{c}" for c in classifier.classes] + ["sorted_to", "error"]
        writer = csv.DictWriter(stream, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            flat = {**row, **{f"p_{k}": v for k, v in row.get("probabilities", {}).items()}}
            writer.writerow(flat)
    elif args.output is not None:
        for row in rows:
            if "kind" in row:
                stream.write(f"{row['path']}\t{row['kind']}\t{row['probability']}\n")
    if args.output is not None:
        atomic_write_bytes(args.output, stream.getvalue().encode("utf-8"))
    else:
        sys.stdout.write(stream.getvalue())
    if target is not None:
        print(f"sorted {len(rows) - failed} files into {target}", file=sys.stderr)
    return 1 if failed else 0


def _expand(inputs: list[Path], recursive: bool, expand: Any) -> list[Path]:
    if not recursive:
        return expand(inputs)
    from captioner.vision.images import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(
                sorted(
                    p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            files.extend(expand([item]))
    if not files:
        raise CaptionerError(f"{', '.join(map(str, inputs))}: no image files")
    return files
