"""``captioner serve``: load the model once, then run the app under uvicorn (one process)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from captioner.errors import CaptionerError

if TYPE_CHECKING:
    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.model.captioner import Captioner

DEFAULT_MAX_THREADS = 4


def serve(args: argparse.Namespace) -> int:
    threads = configure_threads(args.threads)
    from captioner.model.captioner import Captioner
    from captioner.runtime import resolve_device
    from captioner.serve.app import ServeSettings, create_app
    from captioner.serve.denoising import load_denoiser
    from captioner.serve.modelinfo import read_metrics

    for name, value in (("--port", args.port), ("--max-images", args.max_images)):
        if value < (0 if name == "--port" else 1):
            raise CaptionerError(f"{name} {value} is out of range")
    if args.max_upload_mb <= 0:
        raise CaptionerError("--max-upload-mb must be positive")
    device = resolve_device(args.device)
    captioner = Captioner.from_pretrained(
        args.model, device=device, backbone_weights=args.backbone_weights
    )
    denoiser = load_denoiser(args.denoise, device=str(device)) if args.denoise else None
    classifier = load_classifier(args.classifier, captioner, device, args.backbone_weights)
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images=args.max_images,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        metrics=read_metrics(args.metrics) if args.metrics else None,
        warm_up=True,
    )
    app = create_app(captioner, denoiser, settings, classifier=classifier, catalogue=args.catalogue)
    import uvicorn

    print(
        f"captioner serve: {args.model} on {device} with {threads} threads"
        f"{' + denoiser ' + str(args.denoise) if denoiser else ''}"
        f"{' + classifier ' + str(args.classifier) if classifier else ''}"
        f"{' + catalogue ' + str(args.catalogue) if args.catalogue else ''}; "
        f"open http://{_url_host(args.host)}:{args.port}/",
        file=sys.stderr,
        flush=True,
    )
    if captioner.info.get("image_transform") and denoiser is None:
        print(
            "captioner serve: note: the model was trained on features of images denoised by "
            f"{captioner.info['image_transform']}; without --denoise, requests cannot ask for it",
            file=sys.stderr,
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"captioner serve: listening on {args.host}: anyone who can reach it can use it "
            "(there is no authentication)",
            file=sys.stderr,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
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
    shared = (
        mine is not None
        and mine.name == config.backbone
        and mine.weights_id == config.backbone_weights_id
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
