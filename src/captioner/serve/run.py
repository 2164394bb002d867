"""``captioner serve``: load the model once, then run the app under uvicorn (one process)."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from captioner.errors import CaptionerError
from captioner.serve.schemas import ServeSettings

if TYPE_CHECKING:
    from captioner.caption.captioner import Captioner
    from captioner.doctype.classifier import DocTypeClassifier

DEFAULT_MAX_THREADS = 4


@dataclass
class ServeLaunch:
    """What ``captioner serve`` loads and where it listens (its options map onto this; the
    service's limits are ``ServeSettings``)."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: min(4, CPU count)
    backbone_weights: str = "DEFAULT"
    denoise: Path | None = None
    classifier: Path | None = None
    catalogue: Path | None = None
    log_level: str = "info"


def serve(launch: ServeLaunch, settings: ServeSettings) -> int:
    """Load the models of ``launch`` and run the app with ``settings`` until interrupted."""
    threads = configure_threads(launch.threads)
    from captioner.caption.captioner import Captioner
    from captioner.runtime import resolve_device
    from captioner.serve.app import create_app
    from captioner.serve.denoising import load_denoiser

    if not 0 <= launch.port <= 65535:
        raise CaptionerError(f"--port {launch.port} is out of range")
    if settings.max_images < 1:
        raise CaptionerError(f"--max-images {settings.max_images} is out of range")
    if settings.max_upload_bytes <= 0:
        raise CaptionerError("--max-upload-mb must be positive")
    device = resolve_device(launch.device)
    captioner = Captioner.from_pretrained(
        launch.model, device=device, backbone_weights=launch.backbone_weights
    )
    denoiser = load_denoiser(launch.denoise, device=str(device)) if launch.denoise else None
    classifier = load_classifier(launch.classifier, captioner, device, launch.backbone_weights)
    app = create_app(
        captioner, denoiser, settings, classifier=classifier, catalogue=launch.catalogue
    )
    import uvicorn

    print(
        f"captioner serve: {launch.model} on {device} with {threads} threads"
        f"{' + denoiser ' + str(launch.denoise) if denoiser else ''}"
        f"{' + classifier ' + str(launch.classifier) if classifier else ''}"
        f"{' + catalogue ' + str(launch.catalogue) if launch.catalogue else ''}; "
        f"open http://{_url_host(launch.host)}:{launch.port}/",
        file=sys.stderr,
        flush=True,
    )
    if captioner.info.get("image_transform") and denoiser is None:
        print(
            "captioner serve: note: the model was trained on features of images denoised by "
            f"{captioner.info['image_transform']}; without --denoise, requests cannot ask for it",
            file=sys.stderr,
        )
    if launch.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"captioner serve: listening on {launch.host}: anyone who can reach it can use it "
            "(there is no authentication)",
            file=sys.stderr,
        )
    uvicorn.run(app, host=launch.host, port=launch.port, log_level=launch.log_level, workers=1)
    return 0


def load_classifier(
    path: Path | None, captioner: Captioner, device: torch.device, backbone_weights: str
) -> DocTypeClassifier | None:
    """The ``--classifier`` folder, sharing the captioner's backbone when it is the same one
    (one backbone pass then serves both models)."""
    if path is None:
        return None
    from captioner.doctype.classifier import DocTypeClassifier, read_classifier_config

    config = read_classifier_config(path)
    mine = captioner.backbone
    from captioner.vision.backbones import default_image_size

    shared = (  # the classifier reads the backbone at its own input size
        mine is not None
        and mine.name == config.backbone
        and mine.weights_id == config.backbone_weights_id
        and mine.preprocessing.image_size == default_image_size(mine.name)
    )
    return DocTypeClassifier.from_pretrained(
        path, device=device, backbone_weights=backbone_weights, backbone=mine if shared else None
    )


def configure_threads(threads: int | None) -> int:
    """Bound torch's CPU threads (intra-op) and use one inter-op thread; return the count."""
    if threads is None:
        threads = min(DEFAULT_MAX_THREADS, os.cpu_count() or 1)
    if threads < 1:
        raise CaptionerError(f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set or in use: keep torch's
        torch.set_num_interop_threads(1)
    return threads


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
