"""Evaluate a classifier on labelled images, clean and with Gaussian noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.data.labelled import LabelledImage
from captioner.doctype.augment import NoiseView
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.metrics import classification_metrics
from captioner.doctype.report import Mistake, write_mistakes_page
from captioner.errors import CaptionerError
from captioner.fileio import atomic_write_json
from captioner.viz import plot_confusion


@dataclass
class ClassifierEvaluation:
    """Reports per condition ("clean", "noise_25"), images that could not be read."""

    reports: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    mistakes: list[Mistake] = field(default_factory=list)


def evaluate_classifier(
    classifier: DocTypeClassifier,
    items: list[LabelledImage],
    noise_sigmas: tuple[float, ...] = (25.0,),
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = True,
    seed: int = 0,
) -> ClassifierEvaluation:
    known = set(classifier.classes)
    unknown = sorted({item.label for item in items} - known)
    if unknown:
        raise CaptionerError(
            f"labels {unknown} are not classes of this classifier ({', '.join(classifier.classes)})"
        )
    if not items:
        raise CaptionerError("no labelled images to evaluate on")
    conditions: list[tuple[str, Any]] = [("clean", None)]
    conditions += [(f"noise_{s:g}", NoiseView(s, seed)) for s in noise_sigmas]
    result = ClassifierEvaluation(reports={})
    paths = [Path(item.path) for item in items]
    for name, transform in conditions:
        labels, probs, rows = [], [], []
        for i, (path, prediction, problem) in enumerate(
            classifier.classify_paths(
                paths, batch_size, num_workers, progress, image_transform=transform
            )
        ):
            if prediction is None:
                result.skipped[str(path)] = problem
                continue
            label = classifier.classes.index(items[i].label)
            labels.append(label)
            probs.append([prediction.probabilities[c] for c in classifier.classes])
            rows.append((items[i], prediction))
        report = classification_metrics(
            np.asarray(labels),
            np.asarray(probs).reshape(len(labels), len(classifier.classes)),
            classifier.classes,
            classifier.config.photo_class or "",
            classifier.config.photo_threshold,
            groups=[item.group for item, _ in rows],
        )
        result.reports[name] = report
        for item, prediction in rows:
            if prediction.kind != item.label:
                result.mistakes.append(
                    Mistake(
                        item.path,
                        item.label,
                        prediction.kind,
                        prediction.probability,
                        name.replace("_", " "),
                        prediction.probabilities,
                    )
                )
    return result


def write_evaluation(
    evaluation: ClassifierEvaluation, out_dir: Path, summary: dict[str, Any]
) -> None:
    """report.json, one confusion PNG per condition, mistakes.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, report in evaluation.reports.items():
        plot_confusion(
            report["confusion"],
            report["classes"],
            out_dir / f"confusion_{name}.png",
            title=f"{name.replace('_', ' ')}: accuracy {report['accuracy'] * 100:.1f} %, "
            f"macro-F1 {report['macro_f1']:.3f}",
        )
    atomic_write_json(
        out_dir / "report.json",
        {**summary, "reports": evaluation.reports, "skipped": evaluation.skipped},
    )
    write_mistakes_page(evaluation.mistakes, out_dir, summary)
