"""Tiny models and a mixed folder for the pipeline tests, built in a few seconds.

The classifier is a real head (photos vs text pages) on pooled MobileNetV2 features with the
offline ImageNet weights; the captioner is a small decoder on the same backbone that learnt to
say one caption; the denoiser is a small untrained U-Net (deterministic, cheap).
"""

from __future__ import annotations

from pathlib import Path

import torch
from doctype_tiny import photo, text_page

from captioner.caption.captioner import Captioner
from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import Vocabulary
from captioner.denoise.denoiser import save_denoiser
from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.doctype.classifier import DocTypeClassifier
from captioner.doctype.features import pool_grid
from captioner.doctype.model import DocTypeConfig, DocTypeHead
from captioner.vision.backbones import Backbone, load_backbone

CAPTION = "a red circle above a blue square"


def _single_thread() -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only spin on a busy machine
    return threads


def build_models(folder: Path) -> dict[str, Path]:
    """Write ``classifier/``, ``captioner/`` and ``denoiser/`` under ``folder``."""
    threads = _single_thread()
    try:
        torch.manual_seed(0)
        backbone = load_backbone("mobilenet_v2", "DEFAULT")
        paths = {
            "classifier": _classifier(folder / "classifier", backbone),
            "captioner": _captioner(folder / "captioner", backbone),
            "denoiser": folder / "denoiser",
        }
        net = DenoiserNet(DenoiserConfig(widths=(8, 16), depths=(1, 1)))
        save_denoiser(net, folder / "denoiser", {"note": "untrained, for tests"})
    finally:
        torch.set_num_threads(threads)
    return paths


@torch.inference_mode()
def _pooled(backbone: Backbone, pictures: list) -> torch.Tensor:
    batch = torch.stack([backbone.transform(p) for p in pictures])
    return pool_grid(backbone(batch))


def _classifier(folder: Path, backbone: Backbone) -> Path:
    photos = [photo(100 + i) for i in range(8)]
    pages = [text_page(200 + i) for i in range(8)]
    features = torch.cat([_pooled(backbone, photos), _pooled(backbone, pages)])
    labels = torch.tensor([0] * 8 + [1] * 8)
    config = DocTypeConfig(
        classes=["Photo", "Text"], backbone_weights_id=backbone.weights_id, dropout=0.0
    )
    head = DocTypeHead(config.channels, 2, 0.0)
    head.set_standardisation(features)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DocTypeClassifier(head.eval(), config, backbone).save_pretrained(folder, {"test": True})
    return folder


def _captioner(folder: Path, backbone: Backbone) -> Path:
    vocab = Vocabulary.build([CAPTION, "a green triangle"])
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
        position_embedding=True,
    )
    model = ShowAttendTell(config)
    ids = torch.tensor([vocab.encode(CAPTION)] * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        out = model(torch.randn(4, config.num_regions, config.feature_channels), ids)
        loss, _ = caption_loss(out.logits, ids[:, 1:], out.attention)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    Captioner(model.eval(), vocab, header, {"epoch": 1}).save_pretrained(folder)
    return folder


def write_mixed_folder(root: Path, photos: int = 4, pages: int = 4, start: int = 0) -> Path:
    """``root/photo-NN.jpg`` and ``root/page-NN.png``, in a subfolder ``more/`` for half."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "more").mkdir(exist_ok=True)
    for i in range(photos):
        where = root if i % 2 == 0 else root / "more"
        photo(300 + start + i).save(where / f"photo-{start + i:02d}.jpg", quality=90)
    for i in range(pages):
        where = root if i % 2 == 0 else root / "more"
        text_page(400 + start + i).save(where / f"page-{start + i:02d}.png")
    return root


def pipeline_args(models: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--classifier",
        str(models["classifier"]),
        "--model",
        str(models["captioner"]),
        "--denoise",
        str(models["denoiser"]),
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]
