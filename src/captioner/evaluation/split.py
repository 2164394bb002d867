"""Caption every image of a split from its feature cache, and score the captions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.caption.captioner import (
    Captioner,
    CaptionResult,
    check_backbone_matches,
    image_transform_note,
)
from captioner.caption.decode_settings import DecodeSettings
from captioner.data.manifest import Manifest
from captioner.errors import CaptionerError
from captioner.evaluation.metrics import MetricReport
from captioner.features.cache import FeatureCache
from captioner.runlog import Progress

GridSource = Callable[[Sequence[int]], Any]  # cache rows -> grids [B, regions, channels]


@dataclass
class SplitCaptions:
    results: dict[str, CaptionResult]  # image file -> generated caption
    references: dict[str, list[str]]  # image file -> reference captions
    skipped: list[str]  # images of the split without features
    notes: list[str] = field(default_factory=list)  # e.g. features of other images than trained on

    def hypotheses(self) -> dict[str, str]:
        """Image file -> generated caption text."""
        return {key: result.caption for key, result in self.results.items()}


def caption_split(
    captioner: Captioner,
    manifest: Manifest,
    features_dir: Path,
    split: str,
    decode: DecodeSettings,
    batch_size: int = 64,
    progress: bool = True,
    grids_of: GridSource | None = None,
) -> SplitCaptions:
    """Decode every image of ``split`` whose features are in ``features_dir/split``.

    ``grids_of`` (cache rows -> grids) computes the grids from what the cache holds instead of
    reading them (a model being fine-tuned, whose cache holds its frozen prefix's maps)."""
    cache = FeatureCache.open(Path(features_dir) / split)
    if grids_of is None:
        check_backbone_matches(cache.header, captioner.backbone_header)
    note = image_transform_note(
        captioner.info.get("image_transform"),
        cache.header.get("image_transform"),
        f"the features in {cache.folder} are of",
    )
    valid = set(int(i) for i in cache.valid_indices())
    todo, skipped = [], []
    for record in manifest.split(split):
        try:
            row = cache.index_of(record.file)
        except CaptionerError:  # not in this cache: counted as skipped, like a failed image
            row = -1
        if row in valid:
            todo.append((record, row))
        else:
            skipped.append(record.file)
    results: dict[str, CaptionResult] = {}
    references: dict[str, list[str]] = {}
    bar = Progress(
        total=len(todo), desc=f"captioning {split}", unit="img", disable=not progress, leave=False
    )
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rows = [row for _, row in chunk]
        feats = (
            grids_of(rows)
            if grids_of is not None
            else np.stack([np.asarray(cache.features(row), dtype=np.float32) for row in rows])
        )
        for (record, _), result in zip(
            chunk, captioner.caption_features(feats, decode), strict=True
        ):
            result.source = record.file
            results[record.file] = result
            references[record.file] = list(record.captions)
        bar.update(len(chunk))
    bar.close()
    return SplitCaptions(results, references, skipped, [note] if note else [])


def selection_scores(
    captioner: Captioner,
    manifest: Manifest,
    features_dir: Path,
    split: str,
    decode: DecodeSettings,
    grids_of: GridSource | None = None,
) -> dict[str, float]:
    """BLEU-4 and CIDEr of real decoding of ``split``, from the pure-Python scorer: what model
    selection reads after each epoch (no Java start-up, no progress bar)."""
    captioner.model.eval()
    _, report = score_split(
        captioner,
        manifest,
        features_dir,
        split,
        decode,
        use_java=False,
        progress=False,
        grids_of=grids_of,
    )
    return {"BLEU-4": report.scores["BLEU-4"], "CIDEr": report.scores["CIDEr"]}


def score_split(
    captioner: Captioner,
    manifest: Manifest,
    features_dir: Path,
    split: str,
    decode: DecodeSettings,
    *,
    batch_size: int = 64,
    use_java: bool | None = None,
    progress: bool = True,
    grids_of: GridSource | None = None,
) -> tuple[SplitCaptions, MetricReport]:
    """Caption ``split`` (``caption_split``) and score the captions against its references."""
    from captioner.evaluation.metrics import compute_metrics

    captions = caption_split(
        captioner, manifest, features_dir, split, decode, batch_size, progress, grids_of
    )
    return captions, compute_metrics(captions.references, captions.hypotheses(), use_java=use_java)


@dataclass
class EvaluationReport:
    """The scores of a model (or ensemble) on a split, with what produced them."""

    metrics: MetricReport
    captions: SplitCaptions
    split: str
    manifest: str
    models: list[str]
    model_info: dict[str, Any]
    decode: DecodeSettings
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON report of ``captioner evaluate --output`` (read by ``serve --metrics``,
        scripts/results_table.py)."""
        hyps = self.captions.hypotheses()
        return {
            "scores": self.metrics.scores,
            "tokenizer": self.metrics.tokenizer,
            "skipped_metrics": self.metrics.skipped,
            "num_images": self.metrics.num_images,
            "images_without_features": self.captions.skipped,
            "notes": self.captions.notes,
            "split": self.split,
            "manifest": self.manifest,
            "model": self.models,
            "model_info": self.model_info,
            "decoding": {
                "beam_size": self.decode.beam_size,
                "max_length": self.decode.max_length,
                "length_penalty": self.decode.length_penalty,
            },
            "seconds": round(self.seconds, 2),
            "captions": {
                k: {
                    "generated": hyps[k],
                    "references": self.captions.references[k],
                    **self.metrics.per_image.get(k, {}),
                }
                for k in hyps
            },
        }


class MembersGrids:
    """Cache rows -> each ensemble member's grid from its own cache, concatenated on the
    channel axis (``Ensemble(own_features=True)``); each cache is checked against its model."""

    def __init__(self, models: Sequence[str | Path], folders: Sequence[Path]) -> None:
        from captioner.caption.captioner import read_model_config

        self.caches = [FeatureCache.open(folder) for folder in folders]
        for model, cache in zip(models, self.caches, strict=True):
            check_backbone_matches(cache.header, read_model_config(Path(model))["backbone"])
            if cache.keys != self.caches[0].keys:
                raise CaptionerError(
                    f"{cache.folder}: not the images of {self.caches[0].folder} in the same order"
                )

    def __call__(self, rows: Sequence[int]) -> np.ndarray:
        return np.concatenate(
            [np.stack([c.features(r) for r in rows]).astype(np.float32) for c in self.caches],
            axis=-1,
        )


def evaluate_split(
    models: list[str | Path],
    manifest_path: str | Path,
    features_dir: str | Path | Sequence[str | Path],
    split: str,
    decode: DecodeSettings,
    *,
    batch_size: int = 64,
    use_java: bool | None = None,
    device: Any = "cpu",
    progress: bool = True,
) -> EvaluationReport:
    """Load ``models`` (several: an ensemble), caption ``split`` and score it (pycocoevalcap;
    ``use_java`` None: Java's tokenizer and METEOR where Java is installed). ``features_dir``:
    one folder, or one per model (an ensemble of models fine-tuned separately, each reading
    features made by its own backbone)."""
    started = time.perf_counter()
    dirs = [features_dir] if isinstance(features_dir, str | Path) else list(features_dir)
    if len(dirs) not in (1, len(models)):
        raise CaptionerError(f"{len(models)} models: give one feature folder, or one per model")
    own = len(dirs) > 1
    captioner = Captioner.from_pretrained_ensemble(
        models, device=device, backbone_weights=None, own_features=own
    )
    manifest = Manifest.load(Path(manifest_path))
    if split not in manifest.split_names():
        raise CaptionerError(
            f"{manifest_path}: no split {split!r} (has {', '.join(manifest.split_names())})"
        )
    captions, metrics = score_split(
        captioner,
        manifest,
        Path(dirs[0]),
        split,
        decode,
        batch_size=batch_size,
        use_java=use_java,
        progress=progress,
        grids_of=MembersGrids(models, [Path(d) / split for d in dirs]) if own else None,
    )
    return EvaluationReport(
        metrics=metrics,
        captions=captions,
        split=split,
        manifest=str(manifest_path),
        models=[str(m) for m in models],
        model_info=captioner.info,
        decode=decode,
        seconds=time.perf_counter() - started,
    )
