"""The HTTP API of `captioner serve`, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from PIL import Image, ImageFilter  # noqa: E402
from serve_support import TINY_CAPTION, build_tiny_captioner, live_server, png_bytes  # noqa: E402

from captioner.caption.captioner import Captioner  # noqa: E402
from captioner.serve import create_app  # noqa: E402
from captioner.serve.uploads import safe_name  # noqa: E402

GRID = [7, 7]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def server(captioner: Captioner) -> Iterator[str]:
    with live_server(create_app(captioner)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as http:
        yield http


def post_images(client: httpx.Client, *images: tuple[str, bytes], **options: str) -> httpx.Response:
    files = [("image", (name, data, "application/octet-stream")) for name, data in images]
    return client.post("/v1/caption", files=files, data=options)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    data = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- success
def test_caption_one_image_with_attention(client: httpx.Client) -> None:
    response = post_images(client, ("photo.png", png_bytes((120, 80))), beam_size="3")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["caption"] == TINY_CAPTION
    assert body["tokens"] == TINY_CAPTION.split()
    assert len(body["scores"]) == len(body["tokens"])
    assert all(score <= 0 for score in body["scores"])
    assert body["grid"] == GRID
    attention = body["attention"]
    assert len(attention) == len(body["tokens"])
    for grid in attention:
        assert [len(grid), len(grid[0])] == GRID
        assert sum(map(sum, grid)) == pytest.approx(1.0, abs=1e-3)
    (result,) = body["results"]
    assert result["image"] == "photo.png"
    assert (result["width"], result["height"]) == (120, 80)
    assert result["finished"] is True and result["denoised_image"] is None
    assert result["attention"] == attention
    assert body["settings"] == {"beam_size": 3, "max_length": 30, "denoise": False}
    timings = body["timings"]
    assert timings["total_ms"] >= timings["model_ms"] > 0
    assert timings["batch_images"] >= 1


def test_options_greedy_short_and_no_attention(client: httpx.Client) -> None:
    response = post_images(
        client, ("a.jpg", png_bytes(fmt="JPEG")), beam_size="1", max_length="3", attention="false"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokens"] == TINY_CAPTION.split()[:3]
    assert body["results"][0]["finished"] is False
    assert body["attention"] is None and body["results"][0]["attention"] is None


def test_several_images_in_one_request(client: httpx.Client) -> None:
    images = [(f"img{i}.png", png_bytes((40 + 10 * i, 30 + i), seed=i)) for i in range(3)]
    response = post_images(client, *images)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == ["img0.png", "img1.png", "img2.png"]
    assert [(r["width"], r["height"]) for r in results] == [(40, 30), (50, 31), (60, 32)]
    for result in results:
        assert result["caption"] == TINY_CAPTION
        assert len(result["attention"]) == len(result["tokens"])
    assert response.json()["timings"]["batch_images"] >= 3


def test_twenty_concurrent_requests_are_all_answered_correctly(server: str) -> None:
    reference = httpx.post(
        f"{server}/v1/caption", files=[("image", ("ref.png", png_bytes(), "image/png"))]
    ).json()

    def one(index: int) -> tuple[int, dict]:
        size = (50 + index, 40 + index)
        files = [("image", (f"req{index}.png", png_bytes(size, seed=index), "image/png"))]
        with httpx.Client(base_url=server, timeout=120) as http:
            response = http.post("/v1/caption", files=files, data={"beam_size": "3"})
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, range(20)))
    for index, (status, body) in enumerate(answers):
        assert status == 200, body
        (result,) = body["results"]
        assert result["image"] == f"req{index}.png"
        assert (result["width"], result["height"]) == (50 + index, 40 + index)
        assert body["caption"] == reference["caption"]
        assert body["scores"] == pytest.approx(reference["scores"], abs=1e-3)
        assert len(body["attention"]) == len(reference["attention"])
        assert 1 <= body["timings"]["batch_images"] <= 8


# ---------------------------------------------------------------------------- refusals
def test_oversize_upload_is_413(client: httpx.Client) -> None:
    big = png_bytes() + b"\x00" * (10 * 2**20)
    response = post_images(client, ("huge.png", big))
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert "huge.png" in response.json()["detail"]


def test_upload_limit_is_configurable(captioner: Captioner) -> None:
    app = create_app(captioner, max_upload_bytes=2000, max_images=2)
    with live_server(app) as url:
        small = httpx.post(
            f"{url}/v1/caption", files=[("image", ("ok.png", png_bytes((16, 16)), "image/png"))]
        )
        big = httpx.post(
            f"{url}/v1/caption", files=[("image", ("big.bmp", png_bytes(fmt="BMP"), "image/bmp"))]
        )
        many = httpx.post(
            f"{url}/v1/caption",
            files=[("image", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(3)],
        )

        def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
            yield b"--b\r\nContent-Disposition: form-data; name=image; filename=x.png\r\n\r\n"
            for _ in range(20):
                yield b"\x00" * 1024
            yield b"\r\n--b--\r\n"

        streamed = httpx.post(
            f"{url}/v1/caption",
            content=chunked(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        declared = httpx.post(  # Content-Length above the body limit: refused unread
            f"{url}/v1/caption", files=[("image", ("x.png", b"\x00" * 100_000, "image/png"))]
        )
        info = httpx.get(f"{url}/v1/model").json()
    assert small.status_code == 200
    assert big.status_code == 413 and "upload limit of 2,000 bytes" in big.json()["detail"]
    assert many.status_code == 413 and many.json()["code"] == "too_many_images"
    assert streamed.status_code == 413 and streamed.json()["code"] == "too_large"
    assert declared.status_code == 413 and "request body" in declared.json()["detail"]
    assert info["limits"]["max_upload_bytes"] == 2000


def test_text_file_is_415(client: httpx.Client) -> None:
    response = post_images(client, ("notes.txt", b"hello, this is not a picture\n"))
    assert response.status_code == 415
    body = response.json()
    assert body["code"] == "unsupported_image"
    assert body["detail"] == "notes.txt: not an image, or an unsupported image format"


def test_truncated_jpeg_is_422(client: httpx.Client) -> None:
    jpeg = png_bytes((200, 150), fmt="JPEG")
    response = post_images(client, ("cut.jpg", jpeg[: len(jpeg) // 2]))
    assert response.status_code == 422
    assert response.json()["code"] == "corrupt_image"
    assert "cut.jpg" in response.json()["detail"]
    assert "truncated" in response.json()["detail"]


def test_empty_upload_and_missing_file_are_422(client: httpx.Client) -> None:
    empty = post_images(client, ("empty.png", b""))
    assert empty.status_code == 422
    assert empty.json() == {"detail": "empty.png: empty file (0 bytes)", "code": "empty_image"}
    missing = client.post("/v1/caption", data={"beam_size": "3"})
    assert missing.status_code == 422 and missing.json()["code"] == "no_image"


@pytest.mark.parametrize("side", [8000, 20000])
def test_decompression_bomb_is_refused_before_decoding(client: httpx.Client, side: int) -> None:
    response = post_images(client, ("bomb.png", bomb_png(side, side)))
    assert response.status_code == 422
    assert response.json()["code"] == "image_too_large"
    assert "decompression bomb" in response.json()["detail"]


def test_one_bad_image_refuses_the_request_and_names_it(client: httpx.Client) -> None:
    gif = png_bytes(fmt="GIF")
    response = post_images(client, ("good.png", png_bytes()), ("bad.gif", gif[: len(gif) // 2]))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("bad.gif: ")


def test_client_file_name_is_only_a_label(client: httpx.Client) -> None:
    for name in ("../../etc/evil.png", "C:\\Users\\me\\evil.png", "/tmp/evil.png"):
        response = post_images(client, (name, png_bytes()))
        assert response.status_code == 200
        assert response.json()["results"][0]["image"] == "evil.png"


def test_safe_name_keeps_only_a_printable_base_name() -> None:
    assert safe_name("../a/c\u202e\x07.png", 0) == "c.png"
    assert safe_name("", 2) == "image 3"
    assert safe_name(None, 0) == "image 1"
    assert len(safe_name("x" * 500, 0)) == 120


def test_invalid_options_are_422_with_the_field_named(client: httpx.Client) -> None:
    invalid = (
        {"beam_size": "0"},
        {"beam_size": "many"},
        {"max_length": "1000"},
        {"attention": "1"},
        {"beam_size": ""},
    )
    for options in invalid:
        response = post_images(client, ("a.png", png_bytes()), **options)
        assert response.status_code == 422, options
        assert response.json()["code"] == "invalid_request"
        assert next(iter(options)) in response.json()["detail"]


def test_denoise_without_a_denoiser_is_400(client: httpx.Client) -> None:
    response = post_images(client, ("a.png", png_bytes()), denoise="true")
    assert response.status_code == 400
    assert response.json()["code"] == "no_denoiser"


def test_denoise_runs_on_the_worker_and_returns_the_picture(captioner: Captioner) -> None:
    threads: list[str] = []

    def denoiser(image: Image.Image) -> Image.Image:
        threads.append(threading.current_thread().name)
        return image.filter(ImageFilter.MedianFilter(3))

    with live_server(create_app(captioner, denoiser)) as url:
        assert httpx.get(f"{url}/v1/model").json()["denoiser"] is True
        files = [("image", ("n.png", png_bytes((64, 48)), "image/png"))]
        plain = httpx.post(f"{url}/v1/caption", files=files).json()
        cleaned = httpx.post(f"{url}/v1/caption", files=files, data={"denoise": "true"}).json()
    assert plain["results"][0]["denoised_image"] is None and threads == ["captioner-model"]
    url_text = cleaned["results"][0]["denoised_image"]
    assert url_text.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(url_text.split(",", 1)[1])))
    assert picture.size == (64, 48)
    assert cleaned["settings"]["denoise"] is True
    assert cleaned["caption"] == TINY_CAPTION


# ---------------------------------------------------------------------------- other endpoints
def test_health(client: httpx.Client) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok"
    assert body["denoiser"] is False and body["device"] == "cpu"
    assert body["max_queue"] >= 1 and body["threads"] >= 1


def test_model_information(client: httpx.Client, captioner: Captioner) -> None:
    body = client.get("/v1/model").json()
    assert body["backbone"]["name"] == "mobilenet_v2"
    assert body["backbone"]["grid"] == GRID
    assert body["vocab_size"] == len(captioner.vocab)
    assert body["training"] == {"epoch": 1, "train_images": 4}
    assert body["metrics"] is None
    assert body["limits"]["max_upload_bytes"] == 10 * 2**20


def test_openapi_schema(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/caption", "/v1/health", "/v1/model"} <= set(schema["paths"])
    body = schema["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


def test_docs_page_is_served_without_a_cdn(client: httpx.Client) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200 and "/openapi.json" in page.text
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/") for s in sources), sources  # none external
        for source in sources:
            asset = client.get(source)
            assert asset.status_code == 200 and len(asset.content) > 500, source


def test_page_and_static_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="file-input"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    assert client.get("/static/../app.py").status_code == 404


def test_samples(client: httpx.Client) -> None:
    samples = client.get("/v1/samples").json()
    assert samples and samples[0]["id"] == "shapes-1"
    picture = client.get(samples[0]["url"])
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (448, 448)
    thumb = client.get(samples[0]["url"], params={"size": "thumb"})
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 112
    assert client.get("/v1/samples/nope").status_code == 404
    assert client.get("/v1/samples/..%2F..%2Fetc%2Fpasswd").status_code == 404
