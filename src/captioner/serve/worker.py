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

from PIL import Image

from captioner.model.captioner import Captioner, CaptionResult

log = logging.getLogger(__name__)

Denoiser = Callable[[Image.Image], Image.Image]


class WorkerBusy(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class WorkerStopped(Exception):
    """The worker was shut down before the job ran."""


@dataclass(frozen=True)
class JobOptions:
    beam_size: int = 3
    max_length: int = 30
    denoise: bool = False

    @property
    def batch_key(self) -> tuple[int, int]:
        """Jobs with the same key can share one model call."""
        return (self.beam_size, self.max_length)


@dataclass
class JobOutput:
    results: list[CaptionResult]
    denoised: list[Image.Image] | None
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
    """Owns ``captioner`` (and ``denoiser``) and runs every call to them on one thread."""

    def __init__(
        self,
        captioner: Captioner,
        denoiser: Denoiser | None = None,
        *,
        max_queue: int = 64,
        max_batch: int = 8,
        batch_wait_s: float = 0.01,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.captioner = captioner
        self.denoiser = denoiser
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
        prepared = [p for p in (self._denoise(job) for job in live) if p is not None]
        if not prepared:
            return
        options = prepared[0].job.options
        flat = [image for item in prepared for image in item.inputs]
        t0 = time.perf_counter()
        try:
            results = self.captioner.caption(
                flat,
                beam_size=options.beam_size,
                max_length=options.max_length,
                batch_size=len(flat),
            )
        except Exception as exc:  # every waiting request gets the error; the thread lives on
            log.exception("model call failed")
            for item in prepared:
                item.job.future.set_exception(exc)
            return
        model_ms = (time.perf_counter() - t0) * 1000
        offset = 0
        for item in prepared:
            mine = results[offset : offset + len(item.inputs)]
            offset += len(item.inputs)
            item.job.future.set_result(
                JobOutput(
                    results=mine,
                    denoised=item.denoised,
                    queue_ms=(started - item.job.queued_at) * 1000,
                    denoise_ms=item.denoise_ms,
                    model_ms=model_ms,
                    batch_images=len(flat),
                )
            )
        self.served += len(prepared)

    def _denoise(self, job: _Job) -> _Prepared | None:
        """The pictures the captioner sees; None (and the job failed) if the denoiser fails."""
        if not (job.options.denoise and self.denoiser is not None):
            return _Prepared(job, job.images, None, 0.0)
        t0 = time.perf_counter()
        try:
            cleaned = [_as_rgb(self.denoiser(image)) for image in job.images]
        except Exception as exc:
            log.exception("denoiser failed")
            job.future.set_exception(exc)
            return None
        return _Prepared(job, cleaned, cleaned, (time.perf_counter() - t0) * 1000)


@dataclass
class _Prepared:
    job: _Job
    inputs: list[Image.Image]
    denoised: list[Image.Image] | None
    denoise_ms: float


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"the denoiser returned {type(image).__name__}, not a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")
