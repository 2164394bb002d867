"""`captioner serve`: options, start-up errors, the optional denoiser, a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_support import TINY_CAPTION, build_tiny_captioner, free_port, png_bytes  # noqa: E402

from captioner.cli import main  # noqa: E402
from captioner.errors import CaptionerError  # noqa: E402
from captioner.serve.denoising import load_denoiser  # noqa: E402
from captioner.serve.modelinfo import read_metrics  # noqa: E402
from captioner.serve.schemas import ServeSettings  # noqa: E402


def test_serve_options_map_onto_the_launch_and_the_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import captioner.serve.run as run

    seen: list[tuple[run.ServeLaunch, ServeSettings]] = []
    monkeypatch.setattr(run, "serve", lambda launch, settings: seen.append((launch, settings)) or 0)
    assert main(["serve", "--model", "m"]) == 0
    launch, settings = seen.pop()
    assert (launch.model, launch.host, launch.port, launch.denoise) == (
        Path("m"),
        "127.0.0.1",
        8000,
        None,
    )
    assert launch.backbone_weights == "DEFAULT" and launch.threads is None
    assert settings == ServeSettings(warm_up=True)  # the dataclass's own defaults
    assert settings.max_upload_bytes == 10 * 2**20
    argv = [
        "serve",
        "--model",
        "m",
        "--port",
        "9000",
        "--max-images",
        "3",
        "--max-upload-mb",
        "0.5",
    ]
    assert main(argv) == 0
    launch, settings = seen.pop()
    assert launch.port == 9000 and settings.max_images == 3
    assert settings.max_upload_bytes == 2**19 and settings.max_queue == ServeSettings.max_queue


def test_serve_refuses_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["serve", "--model", str(tmp_path / "nope"), "--threads", "1"]) == 2
    finally:
        torch.set_num_threads(threads)  # serve sets the process's torch threads
    assert "not a model folder" in capsys.readouterr().err


def test_denoise_option_needs_a_load_denoiser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captioner.denoise", types.ModuleType("captioner.denoise"))
    with pytest.raises(CaptionerError, match="no load_denoiser"):
        load_denoiser("ckpt")


def test_denoise_option_loads_and_bounds_the_denoiser(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from PIL import Image

    seen: list[tuple[int, int]] = []
    module = types.ModuleType("captioner.denoise")

    def fake_loader(path: Path, device: str = "cpu") -> Callable[[Image.Image], Image.Image]:
        assert path == tmp_path and device == "cpu"
        return lambda image: seen.append(image.size) or image

    module.load_denoiser = fake_loader  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "captioner.denoise", module)
    denoiser = load_denoiser(tmp_path)
    denoiser(Image.new("RGB", (2000, 1000)))
    assert seen == [(768, 384)]
    with pytest.raises(CaptionerError, match="no such file"):
        load_denoiser(tmp_path / "missing")


def test_metrics_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"scores": {"BLEU-4": 30.1}, "split": "test", "captions": {}}))
    assert read_metrics(path) == {"scores": {"BLEU-4": 30.1}, "split": "test"}
    path.write_text("[1, 2]")
    with pytest.raises(CaptionerError, match="JSON object"):
        read_metrics(path)


def test_captioner_serve_process(tmp_path: Path) -> None:
    model = tmp_path / "model"
    build_tiny_captioner(model)
    port = free_port()
    command = [sys.executable, "-m", "captioner.cli", "serve", "--model", str(model)]
    command += ["--backbone-weights", "none", "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{url}/v1/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["threads"] == 1 and health["served"] >= 1
        files = [("image", ("a.png", png_bytes(), "image/png"))]
        answer = httpx.post(f"{url}/v1/caption", files=files, timeout=60).json()
        assert answer["caption"] == TINY_CAPTION
        assert "<title>" in httpx.get(f"{url}/").text
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
    assert "open http://127.0.0.1:" in output
