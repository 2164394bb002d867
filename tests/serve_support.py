"""Helpers of the serve tests: a tiny trained captioner and a real uvicorn server in a thread."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captioner.caption.captioner import Captioner
from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import Vocabulary
from captioner.vision.backbones import load_backbone

#: What the tiny model learns to say about any picture.
TINY_CAPTION = "a red circle above a blue square"


def build_tiny_captioner(folder: Path) -> Captioner:
    """A MobileNetV2 (random init) + small decoder overfitted on one caption, saved and loaded.

    Training on random features teaches the decoder to say ``TINY_CAPTION`` whatever it sees,
    so tests can check captions exactly while the attention still depends on the picture.
    """
    torch.manual_seed(0)
    vocab = Vocabulary.build([TINY_CAPTION, "a green triangle"])
    backbone = load_backbone("mobilenet_v2", "none")
    header = backbone.header()
    config = ModelConfig(
        vocab_size=len(vocab),
        feature_channels=header["channels"],
        num_regions=header["grid"][0] * header["grid"][1],
        encoder_dim=32,
        embed_dim=16,
        attention_dim=16,
        hidden_dim=32,
        init_hidden="mean",
        position_embedding=True,  # random-init CNN features are flat: attention varies by place
    )
    model = ShowAttendTell(config)
    ids = torch.tensor([vocab.encode(TINY_CAPTION)] * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only spin (10x slower on a busy machine)
    try:
        for _ in range(40):
            features = torch.randn(4, config.num_regions, config.feature_channels)
            out = model(features, ids)
            loss, _ = caption_loss(out.logits, ids[:, 1:], out.attention)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    Captioner(model, vocab, header, {"epoch": 1, "train_images": 4}).save_pretrained(folder)
    captioner = Captioner.from_pretrained(folder, backbone_weights=None)
    captioner.backbone = backbone.eval()  # what backbone_weights="none" builds, without a rebuild
    return captioner


def png_bytes(size: tuple[int, int] = (96, 64), seed: int = 0, fmt: str = "PNG") -> bytes:
    """A small picture: a coloured disc on a gradient (differs with ``seed``)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), 0 * xx + 90], -1)
    cx, cy = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (min(w, h) // 4) ** 2
    pixels[disc] = rng.integers(0, 256, size=3)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(app: object) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", workers=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


SEARCH_ROWS = [
    ("/archive/a.jpg", "Photo", "a dog runs on a sandy beach"),
    ("/archive/b.jpg", "Photo", "a dog sleeps on a sofa"),
    ("/archive/c.jpg", "Photo", "boats in a harbour near a beach"),
    ("/archive/d.png", "Text", None),
]


def write_search_catalogue(folder: Path, classes: list[str]) -> Path:
    """A small pipeline catalogue (no models needed): three captioned photos and a text page."""
    from captioner.pipeline.catalogue import Catalogue

    rows = [
        {"path": path, "sha256": f"{i:064x}", "size": 100 + i, "kind": kind,
         "captioned": caption is not None, "caption": caption,
         "caption_score": 0.5 if caption else None}
        for i, (path, kind, caption) in enumerate(SEARCH_ROWS)
    ]  # fmt: skip
    with Catalogue.open(folder, {"classes": classes, "captioner": "tiny"}) as catalogue:
        catalogue.write(rows)
    return folder
