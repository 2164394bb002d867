"""The demo's last step: the whole chain (sort -> clean -> caption) on an embedded archive.

Stand-ins, said plainly: the "photos" are the shapes scenes the demo's captioner was trained
on (held-out test scenes, half of them with Gaussian noise sigma 25); the other kinds are the
procedural pictures of ``data/drawn_kinds.py`` (paintings, charts and diagrams as schematics,
sketches, printed pages as text). A small classifier is fitted on pooled MobileNetV2
features of other drawn pictures and training scenes in seconds, and a denoiser is trained on
the scenes for about a minute; then ``captioner pipeline`` runs over the archive into a
catalogue with its review page.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioner.data.drawn_kinds import chart, diagram, painting, printed_page, sketch
from captioner.data.manifest import Manifest
from captioner.fileio import atomic_write_bytes
from captioner.vision.backbones import Backbone
from captioner.vision.images import load_image

#: Stand-in kind -> (classifier class, drawing functions).
DRAWN: dict[str, tuple[str, tuple[Callable[[int], Image.Image], ...]]] = {
    "painting": ("Painting", (painting,)),
    "schematic": ("Schematics", (chart, diagram)),
    "sketch": ("Sketch", (sketch,)),
    "text": ("Text", (printed_page,)),
}
CLASSES = ["Painting", "Photo", "Schematics", "Sketch", "Text"]
NOISE_SIGMA = 25.0


def _noisy(image: Image.Image, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noisy = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_archive(
    folder: Path, manifest: Manifest, photos: int = 24, per_kind: int = 6, seed: int = 0
) -> dict[str, str]:
    """A mixed folder: test scenes (every other one noisy) and drawn pictures of the other
    kinds. Returns file name -> true class."""
    rng = np.random.default_rng(seed + 7)
    truth: dict[str, str] = {}
    for i, record in enumerate(manifest.split("test")[:photos]):
        image = load_image(manifest.path_of(record))
        name = f"scene-{i:03d}.png" if i % 2 == 0 else f"noisy-scene-{i:03d}.png"
        if i % 2:
            image = _noisy(image, rng)
        atomic_write_bytes(folder / "photos" / name, _png(image))
        truth[name] = "Photo"
    for kind, (label, draws) in DRAWN.items():
        for i in range(per_kind):
            draw = draws[i % len(draws)]
            name = f"{kind}-{i:02d}.png"
            atomic_write_bytes(folder / "drawn" / name, _png(draw(900_000 + 97 * i + seed)))
            truth[name] = label
    return truth


@torch.inference_mode()
def _pooled(backbone: Backbone, images: list[Image.Image]) -> torch.Tensor:
    from captioner.doctype.features import pool_grid

    out = []
    for start in range(0, len(images), 32):
        batch = torch.stack([backbone.transform(im) for im in images[start : start + 32]])
        out.append(pool_grid(backbone(batch)))
    return torch.cat(out)


def train_demo_classifier(
    folder: Path, backbone: Backbone, manifest: Manifest, per_kind: int = 30, seed: int = 0
) -> Path:
    """Fit the five-kind head on pooled features of training scenes (clean and noisy) and
    drawn pictures (other seeds than the archive's); temperature fitted on a held-out third."""
    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.doctype.metrics import fit_temperature
    from captioner.doctype.model import DocTypeConfig, DocTypeHead

    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    labels: list[int] = []
    scenes = manifest.split("train")[: 2 * per_kind]
    for i, record in enumerate(scenes):
        image = load_image(manifest.path_of(record))
        images.append(_noisy(image, rng) if i % 2 else image)
        labels.append(CLASSES.index("Photo"))
    for kind, (label, draws) in DRAWN.items():
        for i in range(per_kind):
            images.append(draws[i % len(draws)](seed * 1000 + 31 * i + len(kind)))
            labels.append(CLASSES.index(label))
    features = _pooled(backbone, images)
    target = torch.tensor(labels)
    held_out = torch.arange(len(labels)) % 3 == 0
    config = DocTypeConfig(classes=CLASSES, backbone_weights_id=backbone.weights_id, dropout=0.2)
    torch.manual_seed(seed)
    head = DocTypeHead(config.channels, len(CLASSES), config.dropout)
    head.set_standardisation(features[~held_out])
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-3)
    head.train()
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(head(features[~held_out]), target[~held_out])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.inference_mode():
        logits = head(features[held_out]).numpy()
    config.temperature = fit_temperature(logits, target[held_out].numpy())
    accuracy = float((logits.argmax(1) == target[held_out].numpy()).mean())
    info = {"demo": True, "held_out_accuracy": accuracy, "images": len(labels)}
    DocTypeClassifier(head, config, backbone).save_pretrained(folder, info)
    return folder


def train_demo_denoiser(out: Path, images: Path, seed: int = 0, progress: bool = True) -> Path:
    """A short denoiser run on the scenes (about a minute on two CPU cores)."""
    from captioner.training.checkpoint import has_training_state
    from captioner.training.denoiser import train_denoiser
    from captioner.training.denoiser_config import DenoiseTrainConfig

    model = out / "model"
    if (model / "config.json").is_file():
        return model
    config = DenoiseTrainConfig(
        images=str(images),
        out=str(out),
        epochs=3,
        steps_per_epoch=50,
        batch_size=8,
        patch_size=64,
        warmup_steps=10,
        val_images=8,
        max_minutes=1.5,
        noise="gaussian=0.9,none=0.1",
        sigma_min=15.0,
        sigma_max=35.0,
        seed=seed,
        progress=progress,
    )
    return train_denoiser(config, resume=has_training_state(out / "checkpoint")).model_dir


def run_chain_demo(
    out: Path,
    model_dir: Path,
    manifest: Manifest,
    weights: str = "DEFAULT",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the demo's classifier and denoiser, run the pipeline over the embedded archive
    into ``out/catalogue``; return the figures (also in ``out/catalogue/demo.json``)."""
    from captioner.caption.captioner import Captioner
    from captioner.denoise.denoiser import load_denoiser
    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.fileio import atomic_write_json
    from captioner.pipeline.catalogue import Catalogue
    from captioner.pipeline.chain import Pipeline
    from captioner.pipeline.run import describe, run_archive
    from captioner.pipeline.settings import PipelineSettings

    started = time.perf_counter()
    timings: dict[str, float] = {}
    captioner = Captioner.from_pretrained(model_dir, backbone_weights=weights)
    assert isinstance(captioner.backbone, Backbone)
    t0 = time.perf_counter()
    truth = write_archive(out / "archive", manifest, seed=seed)
    classifier_dir = train_demo_classifier(out / "classifier", captioner.backbone, manifest)
    timings["classifier"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    denoiser_dir = train_demo_denoiser(out / "denoiser", manifest.image_root, seed, progress)
    timings["denoiser"] = round(time.perf_counter() - t0, 1)
    classifier = DocTypeClassifier.from_pretrained(classifier_dir, backbone=captioner.backbone)
    pipeline = Pipeline(
        classifier,
        load_denoiser(denoiser_dir),
        captioner,
        PipelineSettings(attention=True, num_workers=2),
    )
    catalogue_dir = out / "catalogue"
    if catalogue_dir.exists():  # the demo's catalogue is rebuilt from scratch every time
        shutil.rmtree(catalogue_dir)
    t0 = time.perf_counter()
    summary = run_archive(
        pipeline,
        [out / "archive"],
        catalogue_dir,
        exports=("csv", "jsonl"),
        progress=progress,
    )
    timings["pipeline"] = round(time.perf_counter() - t0, 1)
    print(describe(summary))
    references = {
        (f"scene-{i:03d}.png" if i % 2 == 0 else f"noisy-scene-{i:03d}.png"): r.captions
        for i, r in enumerate(manifest.split("test")[:24])
    }
    with Catalogue.open(catalogue_dir, readonly=True) as catalogue:
        rows = {Path(r["path"]).name: r for r in catalogue.rows()}
        hits = catalogue.search("red circle", limit=3)
    photos = [n for n, k in truth.items() if k == "Photo"]
    others = [n for n, k in truth.items() if k != "Photo"]
    exact = {
        which: [rows[n]["caption"] in references[n] for n in photos if rows[n]["captioned"] and
                n.startswith("noisy") == (which == "noisy")]
        for which in ("clean", "noisy")
    }  # fmt: skip
    figures = {
        "kind_accuracy": sum(rows[n]["kind"] == k for n, k in truth.items()) / len(truth),
        "photos_captioned": sum(rows[n]["captioned"] for n in photos) / len(photos),
        "non_photos_not_captioned": sum(not rows[n]["captioned"] for n in others) / len(others),
        "exact_match_clean": float(np.mean(exact["clean"])) if exact["clean"] else None,
        "exact_match_noisy_denoised": float(np.mean(exact["noisy"])) if exact["noisy"] else None,
        "files": len(truth),
        "timings_s": {**timings, "total": round(time.perf_counter() - started, 1)},
    }
    atomic_write_json(catalogue_dir / "demo.json", figures)
    print(
        f"[demo] chain: kinds right for {100 * figures['kind_accuracy']:.0f}% of "
        f"{len(truth)} files; {100 * figures['photos_captioned']:.0f}% of photos captioned, "
        f"{100 * figures['non_photos_not_captioned']:.0f}% of the others not"
    )
    for which, key in (("clean", "exact_match_clean"), ("noisy", "exact_match_noisy_denoised")):
        if figures[key] is not None:
            print(f"[demo] {which} scenes: exact match {100 * figures[key]:.0f}% of the captioned")
    if hits:
        print(f"[demo] search 'red circle': {Path(hits[0].path).name}: {hits[0].caption}")
    print(f"[demo] review page {summary.page}; try: captioner search \"red circle\" "
          f"--catalogue {catalogue_dir}")  # fmt: skip
    return figures
