"""`serve --catalogue`: GET /v1/search ranks like the catalogue, and the page offers it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_support import build_tiny_captioner, write_search_catalogue

from captioner.caption.captioner import Captioner
from captioner.errors import CaptionerError
from captioner.pipeline.catalogue import Catalogue
from captioner.serve import create_app


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_search_catalogue(tmp_path_factory.mktemp("catalogue"), ["Photo", "Text"])


def test_search_answers_what_the_catalogue_ranks(captioner: Captioner, catalogue: Path) -> None:
    app = create_app(captioner, catalogue=catalogue)
    with TestClient(app) as client:
        assert client.get("/v1/health").json()["catalogue"] is True
        answer = client.get("/v1/search", params={"q": "dog on a beach"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        with Catalogue.open(catalogue, readonly=True) as db:
            expected = db.search("dog on a beach", 20)
        assert [h["path"] for h in body["hits"]] == [h.path for h in expected]
        assert body["hits"][0]["path"] == "/archive/a.jpg"  # both words: first
        assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
        both = client.get("/v1/search", params={"q": "dog beach", "all_words": "true"}).json()
        assert [h["path"] for h in both["hits"]] == ["/archive/a.jpg"]
        one = client.get("/v1/search", params={"q": "dog", "limit": 1}).json()
        assert len(one["hits"]) == 1
        assert client.get("/v1/search", params={"q": "zebra"}).json()["hits"] == []
        for params in ({"q": ""}, {"q": "dog", "limit": 0}, {"q": "dog", "kind": "Sketch"},
                       {"q": "dog", "all_words": "1"}):  # fmt: skip
            refused = client.get("/v1/search", params=params)
            assert refused.status_code == 422, params
            assert refused.json()["code"] == "invalid_request"
        page = client.get("/").text
        assert 'id="search-panel"' in page
    app.state.worker.stop()


def test_no_catalogue_no_search(captioner: Captioner, tmp_path: Path) -> None:
    app = create_app(captioner)
    with TestClient(app) as client:
        assert client.get("/v1/health").json()["catalogue"] is False
        assert client.get("/v1/search", params={"q": "dog"}).status_code == 404
        assert "/v1/search" not in client.get("/openapi.json").json()["paths"]
    app.state.worker.stop()
    with pytest.raises(CaptionerError, match="no catalogue here"):
        create_app(captioner, catalogue=tmp_path / "nothing")
