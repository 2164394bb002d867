"""The single model worker: one thread owns the model; requests reach it through a queue.

Torch modules are not safe to call from many threads at once, and parallel calls would only
fight over the same CPU cores, so every model call (denoiser included) happens on this one
thread. Requests queue up (a bounded queue: when it is full, ``submit`` raises ``WorkerBusy``)
and the worker merges the queued requests that share decoding settings into one batch, up to
``max_batch`` images, waiting at most ``batch_wait_s`` for company.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from captioner.caption.captioner import Captioner, CaptionResult
from captioner.caption.decode_settings import DecodeSettings

if TYPE_CHECKING:
    from captioner.doctype.classifier import DocTypeClassifier, DocTypePrediction

log = logging.getLogger(__name__)

Denoiser = Callable[[Image.Image], Image.Image]


class WorkerBusy(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class WorkerStopped(Exception):
    """The worker was shut down before the job ran."""


@dataclass(frozen=True)
class JobOptions:
    beam_size: int = DecodeSettings.beam_size
    max_length: int = DecodeSettings.max_length
    denoise: bool = False
    caption: bool = True  # False: classify only (POST /v1/classify)
    caption_anyway: bool = False  # caption images the classifier says are not photos

    @property
    def batch_key(self) -> tuple[int, int]:
        """Jobs with the same key can share one model call."""
        return (self.beam_size, self.max_length)


@dataclass
class JobOutput:
    results: list[CaptionResult | None]  # None: not captioned (not a photo, or classify only)
    denoised: list[Image.Image | None] | None
    kinds: list[DocTypePrediction] | None  # with a classifier
    queue_ms: float
    denoise_ms: float
    model_ms: float
    batch_images: int


@dataclass
class _Job:
    images: list[Image.Image]
    options: JobOptions
    future: Future[JobOutput] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


_STOP = object()


class ModelWorker:
    """Owns ``captioner`` (and ``denoiser``, ``classifier``) and runs every call to them on
    one thread. With a classifier, every image is classified first (from the captioner's own
    backbone pass when both read the same backbone) and only photos are captioned, unless a
    job asks for ``caption_anyway``."""

    def __init__(
        self,
        captioner: Captioner,
        denoiser: Denoiser | None = None,
        classifier: DocTypeClassifier | None = None,
        *,
        max_queue: int = 64,
        max_batch: int = 8,
        batch_wait_s: float = 0.01,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.captioner = captioner
        self.denoiser = denoiser
        self.classifier = classifier
        self.shared_backbone = classifier is not None and _same_backbone(captioner, classifier)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.served = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._held: _Job | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._loop, name="captioner-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ requests
    def submit(self, images: Sequence[Image.Image], options: JobOptions) -> Future[JobOutput]:
        """Queue images for captioning; the future gets their results in order."""
        if not self.alive:
            raise WorkerStopped("the model worker is not running")
        if options.denoise and self.denoiser is None:
            raise ValueError("this server has no denoiser")
        if not options.caption and self.classifier is None:
            raise ValueError("this server has no classifier")
        job = _Job(list(images), options)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise WorkerBusy(f"{self.max_queue} requests are already waiting") from None
        return job.future

    def warm_up(self, timeout: float = 60.0) -> None:
        """Caption one blank picture so the first real request is not slowed by lazy setup."""
        blank = Image.new("RGB", (64, 64), (128, 128, 128))
        self.submit([blank], JobOptions(beam_size=1, max_length=2)).result(timeout)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        stopping = False
        while not stopping or self._held is not None:
            first = self._take(block=True)
            if first is None:
                stopping = True
                continue
            batch, stopping = self._gather(first, stopping)
            self._run(batch)
        # Anything still queued after the stop marker is refused, not left hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                item.future.set_exception(WorkerStopped("the server is shutting down"))

    def _take(self, block: bool) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        item = self._queue.get(block=block)
        return None if item is _STOP else item  # type: ignore[return-value]

    def _gather(self, first: _Job, stopping: bool) -> tuple[list[_Job], bool]:
        """Add queued jobs with the same settings to ``first``, up to ``max_batch`` images."""
        batch, count = [first], len(first.images)
        deadline = time.perf_counter() + self.batch_wait_s
        while count < self.max_batch and not stopping:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                stopping = True
                break
            assert isinstance(item, _Job)
            if item.options.batch_key != first.options.batch_key or count + len(item.images) > (
                self.max_batch
            ):
                self._held = item  # runs next, so order is kept
                break
            batch.append(item)
            count += len(item.images)
        return batch, stopping

    def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        t0 = time.perf_counter()
        try:
            kinds, grids = self._classify([image for job in live for image in job.images])
        except Exception as exc:  # every waiting request gets the error; the thread lives on
            log.exception("classifier failed")
            for job in live:
                job.future.set_exception(exc)
            return
        classify_ms = (time.perf_counter() - t0) * 1000
        prepared, offset = [], 0
        for job in live:
            count = len(job.images)
            mine = kinds[offset : offset + count] if kinds is not None else None
            mine_grids = grids[offset : offset + count] if grids is not None else None
            offset += count
            item = self._prepare(job, mine, mine_grids)
            if item is not None:
                prepared.append(item)
        if not prepared:
            return
        options = prepared[0].job.options
        t0 = time.perf_counter()
        try:
            results = self._caption(prepared, options)
        except Exception as exc:
            log.exception("model call failed")
            for item in prepared:
                item.job.future.set_exception(exc)
            return
        model_ms = (time.perf_counter() - t0) * 1000 + classify_ms
        offset = 0
        flat = sum(len(item.job.images) for item in prepared)
        for item in prepared:
            wanted = [i for i, grid in enumerate(item.grids) if grid is not None]
            mine_results: list[CaptionResult | None] = [None] * len(item.job.images)
            for i, result in zip(wanted, results[offset : offset + len(wanted)], strict=True):
                mine_results[i] = result
            offset += len(wanted)
            item.job.future.set_result(
                JobOutput(
                    results=mine_results,
                    denoised=item.denoised,
                    kinds=item.kinds,
                    queue_ms=(started - item.job.queued_at) * 1000,
                    denoise_ms=item.denoise_ms,
                    model_ms=model_ms,
                    batch_images=flat,
                )
            )
        self.served += len(prepared)

    @torch.inference_mode()
    def _grids(self, images: list[Image.Image]) -> torch.Tensor:
        """The captioner's backbone grids of pictures, as ``Captioner.caption`` computes them."""
        backbone = self.captioner.backbone
        assert backbone is not None
        pixels = torch.stack([backbone.transform(_as_rgb(image)) for image in images])
        return backbone(pixels.to(self.captioner.device))

    def _classify(
        self, images: list[Image.Image]
    ) -> tuple[list[DocTypePrediction] | None, torch.Tensor | None]:
        """Kinds of the original pictures (the classifier runs before any denoising), and the
        grids computed for them when the classifier shares the captioner's backbone."""
        if self.classifier is None:
            return None, None
        if self.shared_backbone:
            with self.classifier.taps(self.captioner.backbone) as taps:
                grids = self._grids(images)
            return self.classifier.predict_grid(grids, taps.take()), grids
        return self.classifier([_as_rgb(image) for image in images]), None

    def _prepare(
        self,
        job: _Job,
        kinds: list[DocTypePrediction] | None,
        grids: torch.Tensor | None,
    ) -> _Prepared | None:
        """Which pictures to caption and their grids (denoised first when asked); None (and
        the job failed) if the denoiser fails."""
        options = job.options
        keep = [
            options.caption and (kinds is None or kinds[i].is_photo or options.caption_anyway)
            for i in range(len(job.images))
        ]
        chosen: list[_Input | None] = [None] * len(job.images)
        denoised: list[Image.Image | None] | None = None
        denoise_ms = 0.0
        todo = [i for i, k in enumerate(keep) if k]
        if todo and options.denoise and self.denoiser is not None:
            t0 = time.perf_counter()
            try:
                cleaned = {i: _as_rgb(self.denoiser(job.images[i])) for i in todo}
            except Exception as exc:
                log.exception("denoiser failed")
                job.future.set_exception(exc)
                return None
            denoise_ms = (time.perf_counter() - t0) * 1000
            denoised = [cleaned.get(i) for i in range(len(job.images))]
            for i in todo:
                chosen[i] = cleaned[i]
        else:
            for i in todo:  # the grid of the classifier's pass when there was one
                chosen[i] = grids[i] if grids is not None else job.images[i]
        return _Prepared(job, chosen, denoised, kinds, denoise_ms)

    def _caption(self, prepared: list[_Prepared], options: JobOptions) -> list[CaptionResult]:
        inputs = [entry for item in prepared for entry in item.grids if entry is not None]
        if not inputs:
            return []
        decode = DecodeSettings(beam_size=options.beam_size, max_length=options.max_length)
        if all(isinstance(entry, Image.Image) for entry in inputs):
            return self.captioner.caption(inputs, decode, batch_size=len(inputs))
        # Grids from the classifier's pass, and pictures (denoised) whose grids are made now:
        # one decoding call for all of them.
        pictures = [entry for entry in inputs if isinstance(entry, Image.Image)]
        fresh = iter(self._grids(pictures) if pictures else [])
        grids = [next(fresh) if isinstance(e, Image.Image) else e for e in inputs]
        return self.captioner.caption_features(torch.stack(grids), decode)


_Input = Image.Image | torch.Tensor  # a picture to caption, or its backbone grid


@dataclass
class _Prepared:
    job: _Job
    grids: list[_Input | None]  # None: not captioned
    denoised: list[Image.Image | None] | None
    kinds: list[DocTypePrediction] | None
    denoise_ms: float


def _same_backbone(captioner: Captioner, classifier: DocTypeClassifier) -> bool:
    """Whether the classifier reads the captioner's grid (same network, weights, preprocessing)."""
    mine, theirs = captioner.backbone, classifier.backbone
    if mine is None or theirs is None:
        return False
    return mine.header() == theirs.header()


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"the denoiser returned {type(image).__name__}, not a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")
