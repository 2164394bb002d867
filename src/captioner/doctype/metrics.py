"""Classification figures: accuracy, per-class precision/recall/F1, macro-F1, the photo-vs-rest
figures the chain depends on, and the calibration error of the probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    photo_class: str = "Photo",
    photo_threshold: float = 0.5,
    bins: int = 10,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """``labels`` [N] class indices, ``probabilities`` [N, K] -> a JSON-ready report.

    Photo decision: P(photo) >= ``photo_threshold`` (what the chain does); the 5-class
    figures use the most probable class. ``groups`` (each image's source) adds the accuracy
    of each (class, source).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for c, name in enumerate(classes):
        tp = confusion[c, c]
        precision = tp / confusion[:, c].sum() if confusion[:, c].sum() else 0.0
        recall = tp / confusion[c].sum() if confusion[c].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(confusion[c].sum()),
        }
    present = [name for name in classes if per_class[name]["support"] > 0]
    report: dict[str, Any] = {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean([per_class[n]["f1"] for n in present])) if present else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classes": list(classes),
        "ece": expected_calibration_error(labels, probabilities, bins),
        "nll": float(
            -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1)).mean()
        )
        if len(labels)
        else 0.0,
    }
    if groups is not None:
        by_source: dict[str, dict[str, Any]] = {}
        for label, guess, group in zip(labels.tolist(), predicted.tolist(), groups, strict=True):
            row = by_source.setdefault(f"{classes[label]}/{group}", {"images": 0, "correct": 0})
            row["images"] += 1
            row["correct"] += int(label == guess)
        report["per_source"] = {
            key: {"images": row["images"], "accuracy": row["correct"] / row["images"]}
            for key, row in sorted(by_source.items())
        }
    if photo_class in classes:
        photo = classes.index(photo_class)
        is_photo = labels == photo
        said_photo = probabilities[:, photo] >= photo_threshold
        report["photo_vs_rest"] = {
            "threshold": photo_threshold,
            "accuracy": float((is_photo == said_photo).mean()) if len(labels) else 0.0,
            "photos": int(is_photo.sum()),
            "photos_kept": float(said_photo[is_photo].mean()) if is_photo.any() else None,
            "non_photos": int((~is_photo).sum()),
            "non_photos_let_through": float(said_photo[~is_photo].mean())
            if (~is_photo).any()
            else None,
        }
    return report


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation NLL of ``softmax(logits / T)`` (Guo et al.,
    2017), searched on a log grid then refined; 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = min(grid, key=nll)
    low, high = best / 1.06, best * 1.06
    for _ in range(40):  # golden-section refinement inside the grid cell
        a, b = high - (high - low) / 1.618, low + (high - low) / 1.618
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float((low + high) / 2)


def format_report(report: dict[str, Any], title: str) -> str:
    """A few console lines: accuracy, macro-F1, photo-vs-rest, per-class F1."""
    lines = [
        f"{title}: {report['images']} images, accuracy {report['accuracy'] * 100:.1f} %, "
        f"macro-F1 {report['macro_f1']:.3f}, ECE {report['ece']:.3f}"
    ]
    pvr = report.get("photo_vs_rest")
    if pvr:
        kept = "n/a" if pvr["photos_kept"] is None else f"{pvr['photos_kept'] * 100:.1f} %"
        through = (
            "n/a"
            if pvr["non_photos_let_through"] is None
            else f"{pvr['non_photos_let_through'] * 100:.1f} %"
        )
        lines.append(
            f"  photo vs rest: accuracy {pvr['accuracy'] * 100:.1f} %, photos kept {kept}, "
            f"non-photos let through {through} (threshold {pvr['threshold']})"
        )
    lines.append(
        "  F1: "
        + ", ".join(
            f"{name} {row['f1']:.2f}" for name, row in report["per_class"].items() if row["support"]
        )
    )
    return "\n".join(lines)
