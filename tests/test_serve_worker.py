"""The model worker: one thread, a bounded queue, micro-batches, answers routed to their callers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from captioner.caption.captioner import CaptionResult  # noqa: E402
from captioner.caption.decode_settings import DecodeSettings
from captioner.serve.worker import JobOptions, ModelWorker, WorkerBusy, WorkerStopped  # noqa: E402


class EchoCaptioner:
    """Says each picture's width; records every call and can be held at a gate."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (images, beam_size, max_length)
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0

    def caption(
        self, images: list[Image.Image], decode: DecodeSettings, **options: Any
    ) -> list[CaptionResult]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.calls.append((len(images), decode.beam_size, decode.max_length))
        time.sleep(0.005)
        self.active -= 1
        if any(image.width == 13 for image in images):
            raise RuntimeError("width 13 breaks the model")
        return [
            CaptionResult(
                f"w{image.width}",
                [f"w{image.width}"],
                [-0.1],
                -0.1,
                np.ones((1, 4)) / 4,
                (2, 2),
                True,
            )
            for image in images
        ]


def picture(width: int) -> Image.Image:
    return Image.new("RGB", (width, 8))


@pytest.fixture
def echo() -> EchoCaptioner:
    return EchoCaptioner()


def test_answers_reach_their_callers_and_calls_are_serialised(echo: EchoCaptioner) -> None:
    worker = ModelWorker(echo, max_queue=64, max_batch=8)  # type: ignore[arg-type]
    worker.start()

    def ask(width: int) -> list[str]:
        images = [picture(width), picture(width + 1000)]
        output = worker.submit(images, JobOptions()).result(10)
        return [r.caption for r in output.results]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(100, 140)))
    worker.stop()
    assert answers == [[f"w{i}", f"w{i + 1000}"] for i in range(100, 140)]
    assert echo.max_active == 1 and echo.threads == {"captioner-model"}
    assert sum(n for n, _, _ in echo.calls) == 80
    assert max(n for n, _, _ in echo.calls) <= 8


def test_queued_requests_with_the_same_settings_share_a_batch(echo: EchoCaptioner) -> None:
    worker = ModelWorker(echo, max_batch=8)  # type: ignore[arg-type]
    worker.start()
    echo.gate.clear()
    first = worker.submit([picture(1)], JobOptions())
    assert echo.entered.wait(5)  # the worker is busy with the first request
    same = [worker.submit([picture(10 + i)], JobOptions(beam_size=3)) for i in range(3)]
    other = worker.submit([picture(20)], JobOptions(beam_size=1))
    later = worker.submit([picture(30)], JobOptions(beam_size=3))
    echo.gate.set()
    outputs = [f.result(10) for f in (first, *same, other, later)]
    worker.stop()
    assert [o.results[0].caption for o in outputs] == ["w1", "w10", "w11", "w12", "w20", "w30"]
    assert echo.calls == [(1, 3, 30), (3, 3, 30), (1, 1, 30), (1, 3, 30)]
    assert [o.batch_images for o in outputs[1:4]] == [3, 3, 3]


def test_a_full_queue_refuses_new_work(echo: EchoCaptioner) -> None:
    worker = ModelWorker(echo, max_queue=2)  # type: ignore[arg-type]
    worker.start()
    echo.gate.clear()
    running = worker.submit([picture(1)], JobOptions())
    assert echo.entered.wait(5)
    waiting = [worker.submit([picture(2)], JobOptions(beam_size=b)) for b in (1, 2)]
    with pytest.raises(WorkerBusy):
        worker.submit([picture(3)], JobOptions())
    echo.gate.set()
    assert [f.result(10).results[0].caption for f in (running, *waiting)] == ["w1", "w2", "w2"]
    worker.stop()


def test_a_model_error_fails_its_batch_only(echo: EchoCaptioner) -> None:
    worker = ModelWorker(echo)  # type: ignore[arg-type]
    worker.start()
    with pytest.raises(RuntimeError, match="width 13"):
        worker.submit([picture(13)], JobOptions()).result(10)
    assert worker.submit([picture(14)], JobOptions()).result(10).results[0].caption == "w14"
    worker.stop()


def test_a_denoiser_error_fails_its_request_only(echo: EchoCaptioner) -> None:
    def denoiser(image: Image.Image) -> Image.Image:
        if image.width == 5:
            raise ValueError("cannot denoise width 5")
        return image.resize((image.width * 2, image.height))

    worker = ModelWorker(echo, denoiser)  # type: ignore[arg-type]
    worker.start()
    echo.gate.clear()
    blocker = worker.submit([picture(1)], JobOptions())
    assert echo.entered.wait(5)
    bad = worker.submit([picture(5)], JobOptions(denoise=True))
    good = worker.submit([picture(6)], JobOptions(denoise=True))
    plain = worker.submit([picture(7)], JobOptions())
    echo.gate.set()
    blocker.result(10)
    with pytest.raises(ValueError, match="width 5"):
        bad.result(10)
    cleaned = good.result(10)
    assert cleaned.results[0].caption == "w12" and cleaned.denoised[0].width == 12
    assert plain.result(10).denoised is None
    worker.stop()


def test_denoise_needs_a_denoiser_and_a_stopped_worker_refuses(echo: EchoCaptioner) -> None:
    worker = ModelWorker(echo)  # type: ignore[arg-type]
    with pytest.raises(WorkerStopped):
        worker.submit([picture(1)], JobOptions())
    worker.start()
    with pytest.raises(ValueError, match="no denoiser"):
        worker.submit([picture(1)], JobOptions(denoise=True))
    worker.stop()
    assert not worker.alive
    with pytest.raises(WorkerStopped):
        worker.submit([picture(1)], JobOptions())


def test_the_api_answers_503_when_the_queue_is_full(echo: EchoCaptioner) -> None:
    httpx = pytest.importorskip("httpx")
    from serve_support import live_server, png_bytes

    from captioner.serve import create_app

    echo.gate.clear()
    app = create_app(echo, max_queue=1)  # type: ignore[arg-type]
    files = [("image", ("a.png", png_bytes(), "image/png"))]
    with live_server(app) as url, ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(httpx.post, f"{url}/v1/caption", files=files, timeout=30)
        assert echo.entered.wait(10)
        queued = pool.submit(httpx.post, f"{url}/v1/caption", files=files, timeout=30)
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/health").json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = httpx.post(f"{url}/v1/caption", files=files, timeout=30)
        echo.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 503
    assert refused.json()["code"] == "busy" and refused.headers["retry-after"] == "1"


def test_the_api_answers_500_in_json_when_the_model_fails(echo: EchoCaptioner) -> None:
    httpx = pytest.importorskip("httpx")
    from serve_support import live_server, png_bytes

    from captioner.serve import create_app

    with live_server(create_app(echo)) as url:  # type: ignore[arg-type]
        files = [("image", ("w13.png", png_bytes((13, 9)), "image/png"))]
        failed = httpx.post(f"{url}/v1/caption", files=files, timeout=30)
        files = [("image", ("w14.png", png_bytes((14, 9)), "image/png"))]
        fine = httpx.post(f"{url}/v1/caption", files=files, timeout=30)
    assert failed.status_code == 500
    assert failed.json() == {"detail": "captioning failed: RuntimeError", "code": "model_error"}
    assert fine.status_code == 200 and fine.json()["caption"] == "w14"
