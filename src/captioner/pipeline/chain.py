"""The chain over an archive: sort (model 1) -> clean (model 2) -> caption (model 3).

``Pipeline(classifier, denoiser, captioner).run(paths)`` yields one :class:`FileResult` per
input file. Files are read, hashed, decoded and resized in ``num_workers`` processes; each model
runs on batches. The classifier reads the backbone grid the captioner needs (and the style
statistics of inner blocks, taken on the same pass), so for an image that is not denoised the
grid is computed once and read by both models (when their backbones
are the same network with the same weights and preprocessing; otherwise each runs its own).
Photos are denoised at the captioner's input resolution (224 px for MobileNetV2, about 1/160
of the work of an 8 Mpx scan) unless ``denoise_size="full"``; a full-resolution denoised copy
is written only with ``save_denoised``.

With a catalogue, a file whose row has the same size and modification time (and a file whose
content, by sha256, is already catalogued) is not processed again, and the results of one batch
are written in one transaction. Batches are fixed slices of the walked list, so a run resumed
after a kill processes exactly the batches an uninterrupted run would have, and ends with the
same rows.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.errors import CaptionerError, CheckpointError, ImageLoadError
from captioner.fileio import _remove_orphaned_temporaries, atomic_write_bytes
from captioner.pipeline.catalogue import COLUMNS, TIMING_COLUMNS, Catalogue, StoredState
from captioner.pipeline.settings import PipelineSettings
from captioner.pipeline.walk import NotWalked, WalkedFile, display_path, walk_inputs
from captioner.vision.backbones import Backbone
from captioner.vision.images import full_size, load_image, load_image_bytes

if TYPE_CHECKING:
    from captioner.caption.captioner import Captioner, CaptionResult
    from captioner.denoise.denoiser import Denoiser
    from captioner.doctype.classifier import DocTypeClassifier, DocTypePrediction

THUMBNAIL_SIDE = 160
DISPLAY_SIDE = 320  # attention maps are drawn on a copy this large
STAGES = ("decode", "classify", "denoise", "caption")
#: Images per forward pass on a CPU: MobileNetV2 and the denoiser run 25-50 % faster per image
#: at 4-16 than at 32 on a 2-core CPU (docs/BENCHMARKS.md, the pipeline).
CPU_FORWARD_BATCH = 8


@dataclass
class FileResult:
    """One input file through the chain (a catalogue row, plus what is not stored)."""

    path: str
    status: str  # "done" (processed now), "kept" (already catalogued), "copied" (same
    # content as a catalogued file), "failed" (unreadable), "not walked"
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    width: int | None = None
    height: int | None = None
    kind: str | None = None
    probability: float | None = None
    photo_probability: float | None = None
    probabilities: dict[str, float] | None = None
    captioned: bool = False
    denoised: bool = False
    denoised_path: str | None = None
    caption: str | None = None
    caption_score: float | None = None  # exp(mean log-probability of its words), in (0, 1]
    caption_log_prob: float | None = None
    thumbnail: str | None = None
    denoised_thumbnail: str | None = None
    attention_path: str | None = None
    classifier_id: str | None = None
    denoiser_id: str | None = None
    captioner_id: str | None = None
    same_as: str | None = None
    error: str | None = None
    note: str | None = None  # why an entry was left out on purpose (not a failure)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: list[str] | None = None
    attention: np.ndarray | None = None  # [words, regions], not stored

    @property
    def failed(self) -> bool:
        return self.error is not None

    def row(self) -> dict[str, Any]:
        """The catalogue row of this result."""
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        for stage in STAGES:
            row[f"{stage}_ms"] = self.timings_ms.get(stage)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], status: str) -> FileResult:
        timings = {s: row[f"{s}_ms"] for s in STAGES if row.get(f"{s}_ms") is not None}
        probabilities = row.get("probabilities")
        if isinstance(probabilities, str):
            import json

            probabilities = json.loads(probabilities)
        values = {name: row.get(name) for name in _ROW_FIELDS}
        values["probabilities"] = probabilities
        values["captioned"] = bool(values["captioned"])
        values["denoised"] = bool(values["denoised"])
        return cls(status=status, timings_ms=timings, **values)


_ROW_FIELDS = [name for name in COLUMNS if name not in TIMING_COLUMNS]


# ---------------------------------------------------------------------------- decoding


@dataclass
class _Decoded:
    index: int
    path: Path
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    pixels: dict[int, Tensor] = field(default_factory=dict)  # side -> uint8 [3, side, side]
    thumbnail: bytes | None = None
    display: np.ndarray | None = None  # uint8 [h, w, 3], at most DISPLAY_SIDE
    seconds: float = 0.0
    error: str | None = None


class _DecodeFiles(Dataset[_Decoded]):
    """Read, hash, decode and resize one file (in a worker process)."""

    def __init__(
        self, files: Sequence[WalkedFile], sides: Sequence[int], thumbnail: bool, display: bool
    ) -> None:
        self.files = files
        self.sides = tuple(sides)
        self.thumbnail = thumbnail
        self.display = display
        # the most pixels any later use reads: large JPEGs are decoded reduced to it
        self.largest_side = max(
            *self.sides, THUMBNAIL_SIDE if thumbnail else 0, DISPLAY_SIDE if display else 0
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> _Decoded:
        started = time.perf_counter()
        path = self.files[index].path
        out = _Decoded(index, path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except PermissionError:
            out.error = "permission denied (cannot read the file)"
        except FileNotFoundError:
            out.error = "file vanished after the walk"
        except OSError as exc:
            out.error = f"cannot read the file ({exc.strerror or exc})"
        else:
            out.sha256 = hashlib.sha256(data).hexdigest()
            try:
                image = load_image_bytes(data, str(path), at_least=self.largest_side)
            except ImageLoadError as exc:
                out.error = exc.problem
            else:
                out.width, out.height = full_size(image)
                out.pixels = {side: resized_pixels(image, side) for side in self.sides}
                if self.thumbnail:
                    out.thumbnail = _jpeg(_shrunk(image, THUMBNAIL_SIDE))
                if self.display:
                    out.display = np.asarray(_shrunk(image, DISPLAY_SIDE))
        out.seconds = time.perf_counter() - started
        return out


def resized_pixels(image: Image.Image, side: int) -> Tensor:
    """uint8 ``[3, side, side]``: the square, antialiased resize every backbone reads."""
    resized = TF.resize(
        image, [side, side], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
    )
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.BICUBIC)
    return copy


def _jpeg(image: Image.Image, quality: int = 80) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _as_list(items: list[_Decoded]) -> list[_Decoded]:
    return items


def plan_batches(count: int, batch_size: int) -> list[list[int]]:
    """Fixed slices of the walked list: batch b holds files b*size ... (b+1)*size - 1."""
    return [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]


# ---------------------------------------------------------------------------- ids


def captioner_id(captioner: Captioner) -> str:
    """sha256 (first 16 hex digits) of the decoder's weights, vocabulary and backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(captioner.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(captioner.vocab.fingerprint().encode())
    digest.update(str(captioner.backbone_header.get("weights_id")).encode())
    return digest.hexdigest()[:16]


def _same_backbone(a: dict[str, Any], b: dict[str, Any]) -> bool:
    from captioner.caption.captioner import check_backbone_matches

    try:
        check_backbone_matches(a, b)
    except CheckpointError:
        return False
    return True


# ---------------------------------------------------------------------------- the chain


class Pipeline:
    """Models 1, 2 and 3 chained; each is optional (at least one of 1 and 3 is needed).

    Without a classifier every readable image is captioned; without a captioner files are
    only classified (and, with ``save_denoised``, the chosen kinds cleaned).
    """

    def __init__(
        self,
        classifier: DocTypeClassifier | None = None,
        denoiser: Denoiser | None = None,
        captioner: Captioner | None = None,
        settings: PipelineSettings | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if classifier is None and captioner is None:
            raise CaptionerError("the pipeline needs a classifier, a captioner, or both")
        self.settings = settings or PipelineSettings()
        self.classifier = classifier
        self.denoiser = denoiser
        self.captioner = captioner
        self.device = torch.device(device)
        if classifier is not None:
            if classifier.backbone is None:
                raise CaptionerError("the classifier was loaded without its backbone")
            if self.settings.photo_threshold is not None:
                classifier.config.photo_threshold = self.settings.photo_threshold
            kinds = self.settings.caption_kinds
            unknown = [k for k in kinds or () if k not in classifier.classes]
            if unknown:
                raise CaptionerError(
                    f"caption kinds {unknown} are not classes of the classifier "
                    f"({', '.join(classifier.classes)})"
                )
            if kinds is None and classifier.config.photo_class is None:
                raise CaptionerError(
                    "the classifier has no photo class: name the kinds to caption "
                    "(--caption-kinds) or caption all (--caption-all)"
                )
        if captioner is not None and captioner.backbone is None:
            raise CaptionerError("the captioner was loaded without its backbone")
        self.classifier_backbone: Backbone | None = (
            classifier.backbone.to(self.device) if classifier is not None else None
        )
        self.captioner_backbone: Backbone | None = None
        self.shares_backbone = False
        if captioner is not None:
            assert isinstance(captioner.backbone, Backbone)
            self.captioner_backbone = captioner.backbone.to(self.device)
            if self.classifier_backbone is not None and _same_backbone(
                self.classifier_backbone.header(), captioner.backbone_header
            ):
                self.shares_backbone = True
                self.classifier_backbone = self.captioner_backbone
        for backbone in {id(b): b for b in self._backbones()}.values():
            backbone.to(memory_format=torch.channels_last)
        if denoiser is not None:
            denoiser.net.to(self.device)
        if classifier is not None:
            classifier.head.to(self.device)
            classifier.device = self.device
        if captioner is not None:
            captioner.model.to(self.device)
        self.captioner_id = captioner_id(captioner) if captioner is not None else None
        self.classifier_id = classifier.weights_id[:16] if classifier is not None else None
        self.denoiser_id = denoiser.weights_id[:16] if denoiser is not None else None

    # ------------------------------------------------------------------ description
    def _backbones(self) -> list[Backbone]:
        return [b for b in (self.classifier_backbone, self.captioner_backbone) if b is not None]

    @property
    def caption_kinds(self) -> tuple[str, ...] | None:
        """The kinds routed to the denoiser and captioner (None: every image)."""
        if self.classifier is None or self.settings.caption_all:
            return None
        if self.settings.caption_kinds is not None:
            return tuple(sorted(self.settings.caption_kinds))
        assert self.classifier.config.photo_class is not None
        return (self.classifier.config.photo_class,)

    @property
    def denoises(self) -> bool:
        return self.denoiser is not None and (
            self.captioner is not None or self.settings.save_denoised
        )

    def signature(self) -> dict[str, Any]:
        """Everything that changes a row's kind, caption or scores; a catalogue holds the
        results of one signature only."""
        s = self.settings
        clf = self.classifier
        return {
            "classifier": self.classifier_id,
            "classes": clf.classes if clf is not None else None,
            "temperature": clf.config.temperature if clf is not None else None,
            "photo_threshold": clf.config.photo_threshold if clf is not None else None,
            "caption_kinds": list(self.caption_kinds) if self.caption_kinds else "all",
            "denoiser": self.denoiser_id if self.denoises else None,
            "denoise_size": s.denoise_size if self.denoises else None,
            "captioner": self.captioner_id,
            "backbone": self.captioner_backbone.weights_id[:16]
            if self.captioner_backbone is not None
            else None,
            "beam_size": s.beam_size if self.captioner is not None else None,
            "max_length": s.max_length if self.captioner is not None else None,
            "length_penalty": s.length_penalty if self.captioner is not None else None,
        }

    def notes(self) -> list[str]:
        """Remarks for the user: a captioner trained on other images than it is given."""
        from captioner.caption.captioner import image_transform_note

        if self.captioner is None:
            return []
        given = f"denoiser-{self.denoiser.weights_id}" if self.denoises and self.denoiser else None
        note = image_transform_note(
            self.captioner.info.get("image_transform"), given, "the pipeline gives it"
        )
        return [note] if note else []

    # ------------------------------------------------------------------ running
    def run(
        self,
        paths: Iterable[str | Path],
        out: str | Path | None = None,
        catalogue: Catalogue | None = None,
        progress: bool = False,
    ) -> Iterator[FileResult]:
        """Walk ``paths`` (files and folders) and yield one result per file, then one per
        entry that was not walked. ``out``: where thumbnails, attention maps and denoised
        copies go (nothing is written without it); ``catalogue``: rows are read from and
        written to it (its signature must be this pipeline's)."""
        if catalogue is not None and catalogue.signature != self.signature():
            raise CaptionerError(f"{catalogue.path}: made with other models or settings")
        out_dir = Path(out) if out is not None else None
        walk = walk_inputs(list(paths), exclude=[out_dir] if out_dir else [])
        lookups = [catalogue] if catalogue is not None else []
        yield from self.process(walk.files, out_dir, catalogue, lookups, progress=progress)
        for entry in walk.not_walked:
            yield not_walked_result(entry)

    def process(
        self,
        files: Sequence[WalkedFile],
        out: Path | None,
        store: Catalogue | None,
        lookups: Sequence[Catalogue],
        batches: Sequence[Sequence[int]] | None = None,
        progress: bool = False,
    ) -> Iterator[FileResult]:
        """Process ``batches`` (index lists into ``files``; default: all of them, in fixed
        slices), skipping what ``lookups`` already hold, writing rows to ``store``."""
        s = self.settings
        if batches is None:
            batches = plan_batches(len(files), s.batch_size)
        names = [display_path(f.path) for f in files]
        plan: list[tuple[list[int], list[int]]] = []  # per batch: (kept, to do)
        for batch in batches:
            states: dict[str, StoredState] = {}
            for lookup in lookups:
                states.update(lookup.states([names[i] for i in batch]))
            done = {i for i in batch if self._is_done(files[i], states.get(names[i]))}
            plan.append(([i for i in batch if i in done], [i for i in batch if i not in done]))
        todo = [work for _, work in plan if work]
        sides = sorted({b.preprocessing.image_size for b in self._backbones()})
        loader = DataLoader(
            _DecodeFiles(files, sides, s.thumbnails and out is not None, s.attention),
            batch_sampler=todo,
            num_workers=s.num_workers if len(todo) > 1 else 0,
            collate_fn=_as_list,
        )
        meter = _Meter(max(1, s.num_workers))
        from captioner.runlog import Progress

        total = sum(len(work) for work in todo)
        bar = Progress(total=total, unit="img", desc="pipeline", disable=not progress or not total)
        decoded = iter(loader)
        try:
            for kept, work in plan:
                if kept:
                    rows: dict[str, dict[str, Any]] = {}
                    for lookup in lookups:
                        rows.update({k: v for k, v in _rows_of(lookup, names, kept).items()})
                    for i in kept:
                        yield FileResult.from_row(rows[names[i]], "kept")
                if not work:
                    continue
                items = next(decoded)
                results = self._chain(items, files, names, out, lookups, meter)
                if store is not None:
                    store.write([r.row() for r in results])
                bar.update(len(results))
                bar.set_postfix_str(meter.describe(), refresh=False)
                yield from results
        finally:
            bar.close()

    def _is_done(self, file: WalkedFile, state: StoredState | None) -> bool:
        if state is None or state.size != file.size or state.mtime_ns != file.mtime_ns:
            return False
        if state.error is not None:
            return not self.settings.retry_failed
        return self._has_extras(
            state.denoised, state.denoised_path, state.captioned, state.attention_path
        )

    def _has_extras(
        self, denoised: bool, denoised_path: str | None, captioned: bool, attention: str | None
    ) -> bool:
        """Whether a stored row has the outputs this run asks for (copies, attention maps)."""
        if self.settings.save_denoised and denoised and not denoised_path:
            return False
        return not (self.settings.attention and captioned and not attention)

    # ------------------------------------------------------------------ one batch
    @torch.inference_mode()
    def _chain(
        self,
        items: list[_Decoded],
        files: Sequence[WalkedFile],
        names: list[str],
        out: Path | None,
        lookups: Sequence[Catalogue],
        meter: _Meter,
    ) -> list[FileResult]:
        results: dict[int, FileResult] = {}
        fresh: list[_Decoded] = []
        by_hash: dict[str, int] = {}
        copies: list[tuple[_Decoded, int]] = []
        for item in items:
            meter.add("decode", 1, item.seconds)
            walked = files[item.index]
            result = FileResult(
                names[item.index],
                "done",
                sha256=item.sha256,
                size=walked.size,
                mtime_ns=walked.mtime_ns,
                width=item.width,
                height=item.height,
                error=item.error,
                timings_ms={"decode": _ms(item.seconds)},
            )
            results[item.index] = result
            if item.error is not None:
                result.status = "failed"
                continue
            assert item.sha256 is not None
            if item.sha256 in by_hash:  # the same content twice in this batch
                copies.append((item, by_hash[item.sha256]))
                continue
            stored = self._stored_by_hash(item.sha256, lookups)
            if stored is not None:
                _copy_into(result, stored)
                continue
            by_hash[item.sha256] = item.index
            fresh.append(item)
            if out is not None and item.thumbnail is not None:
                result.thumbnail = _write(out, f"thumbs/{item.sha256[:16]}.jpg", item.thumbnail)
        if fresh:
            self._run_models(fresh, results, out, meter)
        for item, first in copies:
            source = results[first].row()
            _copy_into(results[item.index], source)
        return [results[item.index] for item in items]

    def _stored_by_hash(self, sha256: str, lookups: Sequence[Catalogue]) -> dict[str, Any] | None:
        for lookup in lookups:
            row = lookup.row_by_hash(sha256)
            if row is not None and self._has_extras(
                bool(row["denoised"]),
                row["denoised_path"],
                bool(row["captioned"]),
                row["attention_path"],
            ):
                return row
        return None

    def _run_models(
        self,
        fresh: list[_Decoded],
        results: dict[int, FileResult],
        out: Path | None,
        meter: _Meter,
    ) -> None:
        count = len(fresh)
        grids: Tensor | None = None
        routed = list(range(count))
        if self.classifier is not None:
            assert self.classifier_backbone is not None
            started = time.perf_counter()
            with self.classifier.taps(self.classifier_backbone) as taps:
                grids = self._grids(self.classifier_backbone, [item.pixels for item in fresh])
            predictions = self.classifier.predict_grid(grids, taps.take())
            seconds = time.perf_counter() - started
            meter.add("classify", count, seconds)
            for item, prediction in zip(fresh, predictions, strict=True):
                _classified(results[item.index], prediction, self.classifier_id, seconds / count)
            kinds = self.caption_kinds
            routed = [i for i, p in enumerate(predictions) if kinds is None or p.kind in set(kinds)]
        if not routed:
            return
        pixels: Tensor | None = None  # the captioner's input, uint8 [N, 3, S, S]
        if self.denoises:
            pixels = self._denoise([fresh[i] for i in routed], results, out, meter)
        if self.captioner is None:
            return
        assert self.captioner_backbone is not None
        started = time.perf_counter()
        if pixels is not None:
            cap_grids = self._grids(self.captioner_backbone, pixels)
        elif self.shares_backbone and grids is not None:
            cap_grids = grids[routed]  # the classifier's pass, read again: no second forward
        else:
            cap_grids = self._grids(self.captioner_backbone, [fresh[i].pixels for i in routed])
        from captioner.caption.decode_settings import DecodeSettings

        s = self.settings
        decode = DecodeSettings(
            beam_size=s.beam_size, max_length=s.max_length, length_penalty=s.length_penalty
        )
        captions = self.captioner.caption_features(cap_grids, decode)
        seconds = time.perf_counter() - started
        meter.add("caption", len(routed), seconds)
        for i, caption in zip(routed, captions, strict=True):
            item = fresh[i]
            result = results[item.index]
            _captioned(result, caption, self.captioner_id, seconds / len(routed))
            if out is not None and s.attention:
                cleaned = pixels[routed.index(i)] if pixels is not None else None
                picture = self._display_of(item, cleaned)
                result.attention_path = _write_attention(out, item, picture, caption)

    def _grids(self, backbone: Backbone, pixels: Sequence[dict[int, Tensor]] | Tensor) -> Tensor:
        side = backbone.preprocessing.image_size
        batch = pixels if isinstance(pixels, Tensor) else torch.stack([p[side] for p in pixels])
        x = TF.normalize(
            batch.to(self.device).float().div(255),
            list(backbone.preprocessing.mean),
            list(backbone.preprocessing.std),
        )
        return self._in_passes(backbone, x.contiguous(memory_format=torch.channels_last))

    def _in_passes(self, model: Any, x: Tensor) -> Tensor:
        """``model(x)``, run on ``forward_batch`` images at a time."""
        step = self.forward_batch
        return torch.cat([model(x[i : i + step]) for i in range(0, len(x), step)])

    @property
    def forward_batch(self) -> int:
        """Images per backbone or denoiser pass: a CPU is fastest on a few at a time (their
        activations stay in its caches), a GPU on the whole batch."""
        if self.settings.forward_batch is not None:
            return self.settings.forward_batch
        return self.settings.batch_size if self.device.type == "cuda" else CPU_FORWARD_BATCH

    def _denoise(
        self,
        routed: list[_Decoded],
        results: dict[int, FileResult],
        out: Path | None,
        meter: _Meter,
    ) -> Tensor | None:
        """Denoise the routed images; return the captioner's input (uint8) when there is a
        captioner. Full-resolution copies are written with ``save_denoised``."""
        assert self.denoiser is not None
        s = self.settings
        backbone = self.captioner_backbone or self.classifier_backbone
        assert backbone is not None
        side = backbone.preprocessing.image_size
        started = time.perf_counter()
        cleaned: Tensor | None = None
        full: dict[int, Image.Image] = {}
        if s.denoise_size == "full" or s.save_denoised:
            for j, item in enumerate(routed):
                full[j] = self.denoiser(load_image(item.path))
        if s.denoise_size == "full":
            cleaned = torch.stack([resized_pixels(full[j], side) for j in range(len(routed))])
        elif self.captioner is not None or s.thumbnails:
            small = torch.stack([item.pixels[side] for item in routed]).to(self.device)
            out_small = self._in_passes(self.denoiser.denoise_tensor, small.float().div(255))
            cleaned = out_small.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
        seconds = time.perf_counter() - started
        meter.add("denoise", len(routed), seconds)
        for j, item in enumerate(routed):
            result = results[item.index]
            result.denoised = True
            result.denoiser_id = self.denoiser_id
            result.timings_ms["denoise"] = _ms(seconds / len(routed))
            if out is None:
                continue
            assert item.sha256 is not None
            if j in full and s.save_denoised:
                stem = display_path(item.path.stem)[:60]
                name = f"denoised/{stem}-{item.sha256[:12]}.png"
                result.denoised_path = _write(out, name, _png(full[j]))
            if cleaned is not None and s.thumbnails and item.width and item.height:
                picture = Image.fromarray(cleaned[j].permute(1, 2, 0).numpy())
                picture = picture.resize(_fit(item.width, item.height, THUMBNAIL_SIDE))
                result.denoised_thumbnail = _write(
                    out, f"thumbs/{item.sha256[:16]}-denoised.jpg", _jpeg(picture)
                )
        return cleaned if self.captioner is not None else None

    @staticmethod
    def _display_of(item: _Decoded, cleaned: Tensor | None) -> Image.Image:
        assert item.display is not None
        if cleaned is None:
            return Image.fromarray(item.display)
        height, width = item.display.shape[:2]
        return Image.fromarray(cleaned.permute(1, 2, 0).numpy()).resize((width, height))


# ---------------------------------------------------------------------------- helpers


class _Meter:
    """Images and seconds per stage, for the progress bar."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.images = dict.fromkeys(STAGES, 0)
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, images: int, seconds: float) -> None:
        self.images[stage] += images
        self.seconds[stage] += seconds

    def rate(self, stage: str) -> float:
        seconds = self.seconds[stage] / (self.workers if stage == "decode" else 1)
        return self.images[stage] / seconds if seconds > 0 else 0.0

    def describe(self) -> str:
        return ", ".join(
            f"{stage} {self.rate(stage):.1f}/s" for stage in STAGES if self.images[stage]
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write(out: Path, name: str, data: bytes) -> str:
    """Write ``out/name`` atomically (unless the same bytes are there); return ``name``."""
    target = out / name
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return name
    except OSError:
        pass
    atomic_write_bytes(target, data)
    return name


def _write_attention(
    out: Path, item: _Decoded, picture: Image.Image, caption: CaptionResult
) -> str:
    from captioner.viz import plot_attention

    assert item.sha256 is not None
    name = f"attention/{item.sha256[:16]}.png"
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    # .NAME.PID.draw.tmp: the pattern of fileio's temporaries, removed once their process is
    # gone (a PNG: plot_attention writes JPEG only for .jpg names)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.draw.tmp")
    try:
        plot_attention(
            picture, caption.tokens, caption.attention, caption.grid, temporary, caption.caption
        )
        os.replace(temporary, target)  # atomic: a killed run never leaves half a picture
    finally:
        temporary.unlink(missing_ok=True)
    _remove_orphaned_temporaries(target)
    return name


def _classified(
    result: FileResult, prediction: DocTypePrediction, model_id: str | None, seconds: float
) -> None:
    result.kind = prediction.kind
    result.probability = float(prediction.probability)
    result.photo_probability = float(prediction.photo_probability)
    result.probabilities = {k: float(v) for k, v in prediction.probabilities.items()}
    result.classifier_id = model_id
    result.timings_ms["classify"] = _ms(seconds)


def _captioned(
    result: FileResult, caption: CaptionResult, model_id: str | None, seconds: float
) -> None:
    result.captioned = True
    result.caption = caption.caption
    logs = caption.token_log_probs
    result.caption_score = float(np.exp(np.mean(logs))) if logs else 0.0
    result.caption_log_prob = float(caption.log_prob)
    result.captioner_id = model_id
    result.tokens = list(caption.tokens)
    result.attention = caption.attention
    result.timings_ms["caption"] = _ms(seconds)


def _copy_into(result: FileResult, source: dict[str, Any]) -> None:
    """Give ``result`` the model outputs of a file with the same content."""
    for name in _ROW_FIELDS:
        if name in ("path", "size", "mtime_ns", "error", "same_as"):
            continue
        value = source.get(name)
        if name in ("captioned", "denoised"):
            value = bool(value)
        if name == "probabilities" and isinstance(value, str):
            import json

            value = json.loads(value)
        setattr(result, name, value)
    if source["path"] == result.path:  # its own row: the file was touched, not changed
        result.same_as, result.status = source.get("same_as"), "kept"
    else:
        result.same_as, result.status = source.get("same_as") or source["path"], "copied"


def _rows_of(lookup: Catalogue, names: list[str], indices: list[int]) -> dict[str, dict[str, Any]]:
    wanted = [names[i] for i in indices]
    placeholders = ", ".join("?" * len(wanted))
    return {row["path"]: row for row in lookup.rows(f"WHERE path IN ({placeholders})", wanted)}


def not_walked_result(entry: NotWalked) -> FileResult:
    return FileResult(
        display_path(entry.path),
        "not walked",
        error=entry.reason if entry.failure else None,
        note=None if entry.failure else entry.reason,
    )
