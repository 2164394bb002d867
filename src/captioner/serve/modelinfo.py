"""What ``GET /v1/model`` says about the served model (no server paths are disclosed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.caption.captioner import Captioner
from captioner.errors import CaptionerError

if TYPE_CHECKING:
    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.serve.schemas import ServeSettings

#: Keys of ``Captioner.info`` whose values are file paths on the server: only the name is shown.
PATH_KEYS = {"annotations", "images", "manifest", "features", "out"}


def model_summary(captioner: Captioner, settings: ServeSettings, denoiser: bool) -> dict[str, Any]:
    header = captioner.backbone_header
    info = dict(captioner.info)
    metrics = settings.metrics or info.pop("metrics", None)
    return {
        "backbone": {
            "name": header.get("backbone"),
            "weights_id": header.get("weights_id"),
            "grid": list(captioner.grid),
            "channels": header.get("channels"),
            "image_size": (header.get("preprocessing") or {}).get("image_size"),
        },
        "vocab_size": len(captioner.vocab),
        "decoder": captioner.model.config.to_dict(),
        "training": _without_paths(info),
        "metrics": metrics,
        "denoiser": denoiser,
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_images": settings.max_images,
            "max_pixels": settings.max_pixels,
            "max_beam": settings.max_beam,
            "max_length": settings.max_length,
        },
    }


def classifier_summary(classifier: DocTypeClassifier | None) -> dict[str, Any] | None:
    if classifier is None:
        return None
    info = classifier.info
    return {
        "classes": classifier.classes,
        "photo_class": classifier.config.photo_class,
        "photo_threshold": classifier.config.photo_threshold,
        "temperature": classifier.config.temperature,
        "backbone": classifier.config.backbone,
        "weights_id": classifier.weights_id,
        "training": {k: info[k] for k in ("best_epoch", "counts", "views", "seconds") if k in info},
    }


def read_metrics(path: Path) -> dict[str, Any]:
    """Scores from a ``captioner evaluate --output`` report or a demo ``report.json``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionerError(f"--metrics: {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CaptionerError(f"--metrics: {path}: expected a JSON object")
    keep = ("scores", "decoding", "split", "num_images", "tokenizer")
    picked = {key: data[key] for key in keep if key in data}
    return picked or data


def _without_paths(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _without_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if key in PATH_KEYS and isinstance(value, str):
        return Path(value).name
    return value
