"""``DocTypeClassifier``: model 1 of the chain, images -> kind + calibrated probabilities.

A classifier folder holds ``model.safetensors`` (the head) and ``config.json`` (format marker,
classes, the backbone it reads, temperature, photo threshold, sha256 of the weights, training
summary); the config is written last and nothing is unpickled. The head reads the pooled
backbone grid and, if the config names ``style_blocks``, those blocks' style statistics taken
on the same pass (``doctype/features.py``). The backbone is the stock one
named in the config, checked against the weights id recorded at training time; a classifier
whose last backbone blocks were fine-tuned also holds ``backbone.safetensors`` (the whole
trunk, its SHA-256 the recorded weights id), which loading uses in place of the stock weights.

    clf = DocTypeClassifier.from_pretrained("runs/doctype/model")
    clf([Image.open("scan.jpg")])[0]  # DocTypePrediction(kind="Photo", ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.doctype.features import StyleTaps, describe
from captioner.doctype.model import DocTypeConfig, DocTypeHead
from captioner.errors import CaptionerError, CheckpointError
from captioner.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    load_state,
    read_json_document,
    verify_sha256,
)
from captioner.vision.backbones import Backbone, default_image_size, load_backbone
from captioner.vision.blocks import trunk_blocks, write_folder_trunk
from captioner.vision.images import load_image
from captioner.vision.trunk_file import folder_trunk_weights

FORMAT = "captioner-doctype"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_OTHER_KINDS = {"captioner-model": "a captioner", "captioner-denoiser": "a denoiser"}


@dataclass
class DocTypePrediction:
    """The kind (the photo class when P(photo) reaches the threshold, else the likeliest other
    kind), every class's probability, and the photo decision."""

    kind: str
    probability: float
    probabilities: dict[str, float]
    photo_probability: float
    is_photo: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "probability": round(self.probability, 4),
            "is_photo": self.is_photo,
            "photo_probability": round(self.photo_probability, 4),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
        }

    def describe(self) -> str:
        """``"Schematics, 96 % — not a photo"`` / ``"Photo, 99 %"``."""
        text = f"{self.kind}, {self.probability * 100:.0f} %"
        return text if self.is_photo else f"{text} — not a photo"


class DocTypeClassifier:
    """Callable: images (PIL or paths) -> one :class:`DocTypePrediction` each."""

    def __init__(
        self,
        head: DocTypeHead,
        config: DocTypeConfig,
        backbone: Backbone | None = None,
        device: str | torch.device = "cpu",
        weights_id: str = "",
        info: dict[str, Any] | None = None,
    ) -> None:
        self.head = head.to(device).eval()
        self.config = config
        self.backbone = backbone.to(device) if backbone is not None else None
        self.device = torch.device(device)
        self.weights_id = weights_id
        self.info = info or {}
        if config.photo_class is not None and config.photo_class not in config.classes:
            raise CheckpointError(
                f"photo class {config.photo_class!r} is not one of the classes {config.classes}"
            )

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        backbone_weights: str = "DEFAULT",
        backbone: Backbone | None = None,
    ) -> DocTypeClassifier:
        """Load a classifier folder (or a ``classify train`` run folder holding ``model/``).

        ``backbone``: an already loaded backbone to share (e.g. the captioner's); it must be
        the one the classifier was trained on.
        """
        folder = resolve_classifier_dir(path)
        meta = _read_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing classifier weights")
        sha = verify_sha256(weights, meta["weights_sha256"], folder / CONFIG_FILE)
        try:
            config = DocTypeConfig.from_dict(meta["model"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{folder / CONFIG_FILE}: bad classifier settings ({exc})"
            ) from None
        head = DocTypeHead.for_config(config)
        load_state(head, weights)
        if backbone is None:
            backbone = load_backbone(
                config.backbone, folder_trunk_weights(folder, backbone_weights), config.image_size
            )
        check_backbone(config, backbone, folder)
        return cls(head, config, backbone, device, sha, dict(meta.get("training", {})))

    def save_pretrained(
        self, folder: str | Path, info: dict[str, Any] | None = None, with_backbone: bool = False
    ) -> str:
        """Write ``model.safetensors`` then ``config.json``; return the weights' sha256.
        ``with_backbone`` (fine-tuned blocks) also writes this classifier's backbone trunk and
        records its SHA-256 as the backbone weights id."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if with_backbone and self.backbone is None:
            raise CaptionerError("with_backbone needs the classifier's backbone")
        sha = write_folder_trunk(folder, self.backbone if with_backbone else None)
        if sha is not None:
            self.config.backbone_weights_id = sha
        state = {k: v for k, v in self.head.state_dict().items()}
        sha = atomic_save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": FORMAT})
        self.info = info if info is not None else self.info
        atomic_write_json(
            folder / CONFIG_FILE,
            {
                "format": FORMAT,
                "version": VERSION,
                "model": self.config.to_dict(),
                "weights_sha256": sha,
                "training": self.info,
            },
        )
        self.weights_id = sha
        return sha

    @torch.inference_mode()
    def probabilities_of_pooled(self, pooled: Tensor) -> Tensor:
        """``[B, D]`` what the head reads (pooled features, then any style statistics: see
        ``doctype.features.describe``) -> ``[B, K]`` calibrated probabilities."""
        logits = self.head(pooled.to(self.device))
        return torch.softmax(logits / self.config.temperature, dim=1)

    def taps(self, backbone: Backbone | None = None) -> StyleTaps:
        """A context in which passes of ``backbone`` (default: this classifier's) record the
        style statistics this classifier reads (none if it reads none); give
        ``taps.take()`` to :meth:`predict_grid` with the grids of those passes."""
        backbone = backbone if backbone is not None else self.backbone
        if backbone is None:
            raise CaptionerError("this classifier was loaded without its backbone")
        return StyleTaps(backbone.trunk, self.config.style_blocks)

    def predict_grid(self, grid: Tensor, style: Tensor | None = None) -> list[DocTypePrediction]:
        """Classify from the backbone's grid ``[B, R, C]`` (the one the captioner reads) and,
        for a classifier with ``style_blocks``, the statistics its :meth:`taps` took of the
        same pass."""
        if self.config.style_blocks and style is None:
            raise CaptionerError(
                "this classifier also reads the style statistics of backbone blocks "
                f"{self.config.style_blocks}: run the backbone inside classifier.taps()"
            )
        return self.predictions(self.probabilities_of_pooled(describe(grid, style)))

    def predictions(self, probabilities: Tensor) -> list[DocTypePrediction]:
        photo_class = self.config.photo_class
        photo = self.config.classes.index(photo_class) if photo_class is not None else None
        out = []
        for row in probabilities.cpu().tolist():
            photo_probability = row[photo] if photo is not None else 0.0
            is_photo = photo is not None and photo_probability >= self.config.photo_threshold
            # The kind follows the photo decision: below the threshold, the likeliest other kind.
            candidates = [c for c in range(len(row)) if is_photo or c != photo or len(row) == 1]
            best = photo if is_photo else max(candidates, key=row.__getitem__)
            out.append(
                DocTypePrediction(
                    kind=self.config.classes[best],
                    probability=row[best],
                    probabilities=dict(zip(self.config.classes, row, strict=True)),
                    photo_probability=photo_probability,
                    is_photo=is_photo,
                )
            )
        return out

    @torch.inference_mode()
    def grids(self, pixels: Tensor) -> Tensor:
        """Backbone grids ``[B, R, C]`` of preprocessed images ``[B, 3, S, S]``."""
        if self.backbone is None:
            raise CaptionerError("this classifier was loaded without its backbone")
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.backbone(pixels)

    def predict_pixels(self, pixels: Tensor) -> list[DocTypePrediction]:
        """Classify preprocessed images ``[B, 3, S, S]`` with this classifier's backbone."""
        with self.taps() as taps:
            grid = self.grids(pixels)
        return self.predict_grid(grid, taps.take())

    def __call__(self, images: Sequence[Image.Image | str | Path]) -> list[DocTypePrediction]:
        if self.backbone is None:
            raise CaptionerError("this classifier was loaded without its backbone")
        pictures = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        if not pictures:
            return []
        return self.predict_pixels(torch.stack([self.backbone.transform(p) for p in pictures]))

    def classify_paths(
        self,
        paths: Sequence[Path],
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = True,
        image_transform: Callable[[Image.Image], Image.Image] | None = None,
    ) -> Iterator[tuple[Path, DocTypePrediction | None, str]]:
        """Yield ``(path, prediction, "")`` per file, or ``(path, None, problem)`` for a bad
        one; images are decoded (and ``image_transform``-ed) in ``num_workers`` processes and
        classified in batches."""
        from captioner.runlog import Progress

        if self.backbone is None:
            raise CaptionerError("this classifier was loaded without its backbone")
        loader = DataLoader(
            _Decode(list(paths), self.backbone, image_transform),
            batch_size=batch_size,
            num_workers=num_workers if len(paths) > batch_size else 0,
            collate_fn=_as_list,
        )
        with Progress(total=len(paths), unit="img", desc="classify", disable=not progress) as bar:
            for items in loader:
                good = [(i, t) for i, t, _ in items if t is not None]
                results: dict[int, DocTypePrediction] = {}
                if good:
                    preds = self.predict_pixels(torch.stack([t for _, t in good]))
                    results = {i: p for (i, _), p in zip(good, preds, strict=True)}
                for i, _, problem in items:
                    yield paths[i], results.get(i), problem
                bar.update(len(items))


class _Decode(Dataset[tuple[int, Tensor | None, str]]):
    def __init__(
        self,
        paths: list[Path],
        backbone: Backbone,
        image_transform: Callable[[Image.Image], Image.Image] | None,
    ) -> None:
        self.paths = paths
        self.transform = backbone.transform
        self.image_transform = image_transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            image = load_image(self.paths[i])
            if self.image_transform is not None:
                image = self.image_transform(image)
            return i, self.transform(image), ""
        except CaptionerError as exc:
            return i, None, getattr(exc, "problem", str(exc))


def read_classifier_config(path: str | Path) -> DocTypeConfig:
    """The settings of a classifier folder (refusing a folder of another kind), without
    loading its weights or backbone."""
    folder = resolve_classifier_dir(path)
    try:
        return DocTypeConfig.from_dict(_read_config(folder)["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad classifier settings ({exc})") from None


def check_backbone(config: DocTypeConfig, backbone: Backbone, folder: Path) -> None:
    """Refuse a backbone other than the one the head was trained on."""
    if backbone.name != config.backbone or backbone.channels != config.channels:
        raise CheckpointError(
            f"{folder}: classifier reads {config.backbone} features ({config.channels} "
            f"channels), not {backbone.name} ({backbone.channels})"
        )
    size = config.image_size or default_image_size(config.backbone)
    if backbone.preprocessing.image_size != size:
        raise CheckpointError(
            f"{folder}: classifier reads {size}-px images, this {backbone.name} backbone "
            f"takes {backbone.preprocessing.image_size} px"
        )
    blocks = len(trunk_blocks(backbone.trunk))
    if any(not 0 <= b < blocks for b in config.style_blocks):
        raise CheckpointError(
            f"{folder}: classifier reads style statistics of blocks {config.style_blocks}, "
            f"this {backbone.name} trunk has {blocks} blocks"
        )
    if config.backbone_weights_id and backbone.weights_id != config.backbone_weights_id:
        raise CheckpointError(
            f"{folder}: classifier was trained on {config.backbone} weights "
            f"{config.backbone_weights_id[:12]}, these are {backbone.weights_id[:12]}; "
            "pass the same --backbone-weights as in training"
        )


def resolve_classifier_dir(path: str | Path) -> Path:
    """Accept the model folder itself or a training run folder that holds ``model/``."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    return path


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a document-type classifier folder (no such folder)")
    path = folder / CONFIG_FILE
    try:
        meta = read_json_document(
            path,
            FORMAT,
            VERSION,
            "document-type classifier config",
            missing=f"missing; {folder} is not a document-type classifier",
        )
    except CheckpointError:
        other = _format_of(path)
        if other in _OTHER_KINDS:
            raise CheckpointError(
                f"{folder}: this is {_OTHER_KINDS[other]} model, not a document-type classifier"
            ) from None
        raise
    for key in ("model", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return meta


def _format_of(path: Path) -> str | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _as_list(items: list[Any]) -> list[Any]:
    return items
