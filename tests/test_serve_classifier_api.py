"""``captioner serve --classifier``: uploads that are not photos are said to be so, not
captioned, unless the request asks to caption them anyway; ``POST /v1/classify``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from doctype_tiny import biased_classifier  # noqa: E402
from serve_support import TINY_CAPTION, build_tiny_captioner, live_server, png_bytes  # noqa: E402

from captioner.caption.captioner import Captioner  # noqa: E402
from captioner.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return build_tiny_captioner(tmp_path_factory.mktemp("cap"))


@pytest.fixture(scope="module")
def client(
    captioner: Captioner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("text-classifier")
    classifier = biased_classifier(folder, captioner.backbone, favour="Text")
    app = create_app(captioner, classifier=classifier)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http
    app.state.worker.stop()


def _post(client: httpx.Client, path: str, count: int = 1, **options: str) -> httpx.Response:
    files = [("image", (f"scan{i}.png", png_bytes(seed=i), "image/png")) for i in range(count)]
    return client.post(path, files=files, data=options)


def test_a_non_photo_is_said_to_be_one_and_not_captioned(client: httpx.Client) -> None:
    response = _post(client, "/v1/caption", count=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["caption"] is None
    for result in body["results"]:
        assert result["captioned"] is False and result["caption"] is None
        assert result["tokens"] == [] and result["attention"] is None
        kind = result["kind"]
        assert kind["kind"] == "Text" and not kind["is_photo"]
        assert kind["description"] == "Text, 95 % — not a photo"
        assert sum(kind["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_caption_anyway_captions_it(client: httpx.Client) -> None:
    response = _post(client, "/v1/caption", caption_anyway="true")
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["captioned"] is True and result["caption"] == TINY_CAPTION
    assert result["kind"]["kind"] == "Text"  # still said, captioned on request
    assert response.json()["settings"]["caption_anyway"] is True


def test_classify_endpoint_and_health(client: httpx.Client) -> None:
    response = _post(client, "/v1/classify", count=3)
    assert response.status_code == 200, response.text
    kinds = [r["kind"]["kind"] for r in response.json()["results"]]
    assert kinds == ["Text"] * 3
    assert client.get("/v1/health").json()["classifier"] is True
    model = client.get("/v1/model").json()
    assert model["classifier"]["classes"] == ["Photo", "Text"]
    bad = client.post("/v1/classify", files=[("image", ("x.png", b"not an image", "image/png"))])
    assert bad.status_code == 415 and bad.json()["code"] == "unsupported_image"


def test_a_photo_is_captioned_with_its_kind(captioner: Captioner, tmp_path: Path) -> None:
    classifier = biased_classifier(tmp_path / "photo", captioner.backbone, favour="Photo")
    app = create_app(captioner, classifier=classifier)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        result = _post(http, "/v1/caption").json()["results"][0]
        assert http.post("/v1/classify").status_code == 422  # no image: the error model
    app.state.worker.stop()
    assert result["captioned"] and result["caption"] == TINY_CAPTION
    assert result["kind"]["description"] == "Photo, 95 %"


def test_without_a_classifier_there_is_no_classify_endpoint(captioner: Captioner) -> None:
    app = create_app(captioner)
    try:
        assert "/v1/classify" not in app.openapi()["paths"]
    finally:
        app.state.worker.stop()


def test_serve_refuses_a_captioner_given_as_classifier(
    captioner: Captioner, tmp_path: Path
) -> None:
    folder = tmp_path / "cap"
    captioner.save_pretrained(folder)
    result = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "serve", "--model", str(folder),
         "--classifier", str(folder), "--backbone-weights", "none", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"captioner serve: error: {folder}: this is a captioner model, not a document-type "
        "classifier"
    ]
    assert json.loads((folder / "config.json").read_text())["format"] == "captioner-model"
