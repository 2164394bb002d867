"""``Captioner``: a trained decoder, its vocabulary and its backbone, saved as one folder.

A pretrained folder holds ``config.json`` (model sizes, backbone header, vocabulary
fingerprint, training summary), ``model.safetensors`` (decoder weights) and ``vocab.json``.
Stock backbone weights are not copied: the backbone is rebuilt by name and its weights hash is
checked against the one the features were extracted with. A model whose backbone was
fine-tuned also holds ``backbone.safetensors`` (the whole trunk; its SHA-256 is the header's
``weights_id``), which loading uses in place of the stock weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioner.caption.config import ModelConfig
from captioner.caption.decode_settings import DecodeSettings
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import (
    Hypothesis,
    StepDecoder,
    beam_search,
    greedy_decode,
    sample_decode,
)
from captioner.data.vocabulary import Vocabulary
from captioner.errors import CaptionerError, CheckpointError, ImageLoadError
from captioner.fileio import (
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_json_document,
    verify_sha256,
)
from captioner.vision.trunk_file import TRUNK_FILE, folder_trunk_weights

FORMAT = "captioner-model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"

ImageInput = str | Path | Image.Image


@dataclass
class CaptionResult:
    """One image's caption with the attention of each word."""

    caption: str
    tokens: list[str]
    token_log_probs: list[float]
    log_prob: float
    attention: np.ndarray  # [len(tokens), R]
    grid: tuple[int, int]
    finished: bool
    source: str | None = None
    error: str | None = None

    def to_dict(self, with_attention: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": self.source,
            "caption": self.caption,
            "tokens": self.tokens,
            "token_log_probs": [round(x, 5) for x in self.token_log_probs],
            "log_prob": round(self.log_prob, 5),
            "finished": self.finished,
        }
        if self.error:
            out["error"] = self.error
        if with_attention:
            h, w = self.grid
            out["attention"] = [row.reshape(h, w).round(5).tolist() for row in self.attention]
        return out


@dataclass
class Captioner:
    model: StepDecoder  # one decoder, or an Ensemble
    vocab: Vocabulary
    backbone_header: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    backbone: torch.nn.Module | None = None

    # ----------------------------------------------------------------- persistence
    def save_pretrained(
        self, folder: str | Path, with_backbone: bool = False, backbone_from: Path | None = None
    ) -> Path:
        """Write the folder; ``with_backbone`` (a fine-tuned backbone) also writes the trunk
        of ``self.backbone`` and makes its SHA-256 the header's ``weights_id``;
        ``backbone_from`` copies the fine-tuned trunk of the model folder this one was made
        from (SCST), if that folder has one."""
        if not isinstance(self.model, ShowAttendTell):
            raise CaptionerError("an ensemble is not saved as one model: save its members")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from captioner.vision.blocks import write_folder_trunk

        if with_backbone:
            if self.backbone is None:
                raise CaptionerError("with_backbone needs the Captioner's backbone")
            sha = write_folder_trunk(folder, self.backbone)  # type: ignore[arg-type]
            self.backbone_header = {**self.backbone_header, "weights_id": sha}
        elif backbone_from is not None and (Path(backbone_from) / TRUNK_FILE).is_file():
            data = (Path(backbone_from) / TRUNK_FILE).read_bytes()
            if hashlib.sha256(data).hexdigest() != self.backbone_header.get("weights_id"):
                raise CheckpointError(
                    f"{backbone_from / TRUNK_FILE}: not the backbone this model reads"
                )
            atomic_write_bytes(folder / TRUNK_FILE, data)
        else:
            write_folder_trunk(folder, None)
        weights_sha = atomic_save_safetensors(
            self.model.state_dict(), folder / WEIGHTS_FILE, metadata={"format": FORMAT}
        )
        self.vocab.save(folder / VOCAB_FILE)
        config = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.config.to_dict(),
            "backbone": self.backbone_header,
            "vocabulary_fingerprint": self.vocab.fingerprint(),
            "weights_sha256": weights_sha,
            "info": self.info,
        }
        # Written last: a folder whose config is missing or stale is never loaded as valid.
        atomic_write_json(folder / CONFIG_FILE, config)
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        backbone_weights: str | None = "DEFAULT",
    ) -> Captioner:
        """Load a folder written by ``save_pretrained``.

        ``backbone_weights=None`` skips the CNN (captioning from cached features only);
        ``"DEFAULT"`` is the folder's own fine-tuned backbone when it has one.
        """
        folder = Path(folder)
        config = read_model_config(folder)
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise CheckpointError(f"{weights_path}: missing model weights")
        verify_sha256(weights_path, config.get("weights_sha256"), folder / CONFIG_FILE)
        model_config = model_config_of(config, folder / CONFIG_FILE)
        vocab = Vocabulary.load(folder / VOCAB_FILE)
        if vocab.fingerprint() != config.get("vocabulary_fingerprint"):
            raise CheckpointError(
                f"{folder / VOCAB_FILE}: this vocabulary is not the one the model was trained with"
            )
        if len(vocab) != model_config.vocab_size:
            raise CheckpointError(
                f"{folder / VOCAB_FILE}: {len(vocab)} words but the model expects "
                f"{model_config.vocab_size}"
            )
        model = ShowAttendTell(model_config)
        load_state(model, weights_path)
        model.to(device).eval()
        captioner = cls(model, vocab, dict(config["backbone"]), dict(config.get("info", {})))
        if backbone_weights is not None:
            captioner.attach_backbone(folder_trunk_weights(folder, backbone_weights), device)
        return captioner

    @classmethod
    def from_pretrained_ensemble(
        cls,
        folders: Sequence[str | Path],
        device: str | torch.device = "cpu",
        backbone_weights: str | None = "DEFAULT",
        own_features: bool = False,
    ) -> Captioner:
        """Load several folders as one captioner averaging their word probabilities (one folder:
        that model alone). They must share the vocabulary and the backbone; with
        ``own_features`` (from cached features only) each reads its own backbone's grid, given
        concatenated on the channel axis, so models fine-tuned separately can be combined."""
        from captioner.caption.ensemble import Ensemble

        if len(folders) == 1:
            return cls.from_pretrained(folders[0], device, backbone_weights)
        if own_features and backbone_weights is not None:
            raise CaptionerError("members reading their own grids caption cached features only")
        members = [cls.from_pretrained(f, device, backbone_weights=None) for f in folders]
        first = members[0]
        for folder, member in zip(folders[1:], members[1:], strict=True):
            if member.vocab != first.vocab:
                raise CheckpointError(
                    f"{folder}: its vocabulary differs from {folders[0]}'s; ensemble members "
                    "must be trained on the same vocabulary"
                )
            if not own_features:
                check_backbone_matches(member.backbone_header, first.backbone_header)
        info = {"ensemble": [str(f) for f in folders], "members": [m.info for m in members]}
        transforms = {m.info.get("image_transform") for m in members}
        if len(transforms) == 1:  # the members' inputs agree: the ensemble's is theirs
            info["image_transform"] = transforms.pop()
        model = Ensemble([m.model for m in members], own_features).to(device).eval()
        captioner = cls(model, first.vocab, dict(first.backbone_header), info)
        if backbone_weights is not None:
            weights = folder_trunk_weights(Path(folders[0]), backbone_weights)
            captioner.attach_backbone(weights, device)
        return captioner

    def attach_backbone(self, weights: str = "DEFAULT", device: str | torch.device = "cpu") -> None:
        """Build the CNN the features came from and check it is the same one."""
        from captioner.vision.backbones import load_backbone

        size = self.backbone_header.get("preprocessing", {}).get("image_size")
        backbone = load_backbone(self.backbone_header["backbone"], weights, size)
        check_backbone_matches(backbone.header(), self.backbone_header)
        self.backbone = backbone.to(device).eval()

    # ----------------------------------------------------------------- captioning
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.backbone_header["grid"]
        return int(h), int(w)

    def caption(
        self,
        images: Sequence[ImageInput] | ImageInput,
        decode: DecodeSettings | None = None,
        batch_size: int = 16,
        image_transform: Callable[[Image.Image], Image.Image] | None = None,
        skip_errors: bool = False,
    ) -> list[CaptionResult]:
        """Caption images (paths or PIL images); returns one result per image, in order.

        ``decode`` says how (beam search, greedy, sampling; ``DecodeSettings()`` by default).
        With ``skip_errors`` an unreadable image gets a result with ``error`` set instead of
        stopping the batch.
        """
        if self.backbone is None:
            raise CaptionerError("this Captioner was loaded without a backbone; cannot read images")
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        decode = decode or DecodeSettings()
        from captioner.vision.images import load_image

        results: list[CaptionResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            tensors, names, errors = [], [], {}
            for i, item in enumerate(chunk):
                name = None if isinstance(item, Image.Image) else str(item)
                names.append(name)
                try:
                    picture = item if isinstance(item, Image.Image) else load_image(item)
                    if picture.mode != "RGB":
                        picture = picture.convert("RGB")
                    if image_transform is not None:
                        picture = image_transform(picture)
                    tensors.append(self.backbone.transform(picture))
                except ImageLoadError as exc:
                    if not skip_errors:
                        raise
                    errors[i] = str(exc)
            decoded = iter(self._caption_pixels(torch.stack(tensors), decode) if tensors else [])
            for i, name in enumerate(names):
                if i in errors:
                    results.append(self._failed(name, errors[i]))
                else:
                    result = next(decoded)
                    result.source = name
                    results.append(result)
        return results

    @torch.inference_mode()
    def _caption_pixels(self, pixels: torch.Tensor, decode: DecodeSettings) -> list[CaptionResult]:
        assert self.backbone is not None
        features = self.backbone(pixels.to(self.device))
        return self.caption_features(features, decode)

    @torch.inference_mode()
    def caption_features(
        self, features: torch.Tensor | np.ndarray, decode: DecodeSettings | None = None
    ) -> list[CaptionResult]:
        """Caption precomputed feature grids [B, R, C] (e.g. from a feature cache)."""
        decode = decode or DecodeSettings()
        feats = torch.as_tensor(features).to(self.device, torch.float32)
        if decode.sample:
            generator = torch.Generator(device=feats.device)
            if decode.seed is not None:
                generator.manual_seed(decode.seed)
            hyps = sample_decode(
                self.model, feats, decode.max_length, decode.temperature, decode.top_k, generator
            )
        elif decode.beam_size <= 1:
            hyps = greedy_decode(self.model, feats, decode.max_length)
        else:
            hyps = beam_search(
                self.model, feats, decode.beam_size, decode.max_length, decode.length_penalty
            )
        return [self._result(h) for h in hyps]

    def _result(self, hyp: Hypothesis) -> CaptionResult:
        words = self.vocab.decode(hyp.token_ids)
        return CaptionResult(
            caption=" ".join(words),
            tokens=words,
            token_log_probs=hyp.token_log_probs,
            log_prob=hyp.log_prob,
            attention=hyp.attention,
            grid=self.grid,
            finished=hyp.finished,
        )

    def _failed(self, name: str | None, error: str) -> CaptionResult:
        empty = np.zeros((0, self.grid[0] * self.grid[1]), dtype=np.float32)
        return CaptionResult("", [], [], float("-inf"), empty, self.grid, False, name, error)


def backbone_of(folder: str | Path) -> tuple[str, str, int | None]:
    """(backbone name, weights, input size) that give the features model ``folder`` reads:
    what ``captioner extract --model`` extracts with."""
    folder = Path(folder)
    header = read_model_config(folder)["backbone"]
    size = header.get("preprocessing", {}).get("image_size")
    return str(header["backbone"]), folder_trunk_weights(folder, "DEFAULT"), size


def read_model_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: not a model folder (expected {CONFIG_FILE}, {WEIGHTS_FILE}, {VOCAB_FILE})"
        )
    config = read_json_document(
        path,
        FORMAT,
        VERSION,
        "captioner model config",
        missing=f"missing; {folder} is not a captioner model",
    )
    for key in ("model", "backbone", "vocabulary_fingerprint"):
        if key not in config:
            raise CheckpointError(f"{path}: missing field {key!r}")
    for key in ("model", "backbone"):
        if not isinstance(config[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be an object")
    return config


def model_config_of(config: dict[str, Any], path: Path) -> ModelConfig:
    """The decoder sizes of a model config, consistent with its backbone's feature grid."""
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    backbone = config["backbone"]
    try:
        channels = int(backbone["channels"])
        regions = int(backbone["grid"][0]) * int(backbone["grid"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        raise CheckpointError(f"{path}: 'backbone' needs 'channels' and 'grid' [h, w]") from None
    if (channels, regions) != (model_config.feature_channels, model_config.num_regions):
        raise CheckpointError(
            f"{path}: the backbone gives {regions} regions of {channels} channels but the "
            f"decoder expects {model_config.num_regions} of {model_config.feature_channels}"
        )
    return model_config


def describe_image_transform(transform: str | None) -> str:
    return f"images denoised by {transform}" if transform else "images as they are (not denoised)"


def image_transform_note(trained_on: str | None, given: str | None, given_what: str) -> str | None:
    """A note when a model trained on features of ``trained_on`` images (None: as they are;
    "denoiser-<sha>": denoised) is given ``given`` ones, else None. Not an error: captioning
    clean photos with a model trained on denoised ones, or the reverse, is allowed."""
    if (trained_on or None) == (given or None):
        return None
    return (
        f"the model was trained on features of {describe_image_transform(trained_on)}, "
        f"{given_what} {describe_image_transform(given)}"
    )


def check_backbone_matches(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse features from one CNN fed to a decoder trained on another (a fine-tuned backbone
    counts as another CNN; so does the cut one whose maps ``extract --top-blocks`` caches)."""
    for key in ("top_blocks", "backbone", "weights_id", "preprocessing", "grid", "channels"):
        a = json.loads(json.dumps(actual.get(key)))
        e = json.loads(json.dumps(expected.get(key)))
        if a == e:
            continue
        if key == "weights_id" and expected.get("fine_tuned_blocks"):
            raise CheckpointError(
                f"backbone mismatch: this model's backbone was fine-tuned (weights {str(e)[:12]}), "
                f"these features come from other weights ({str(a)[:12]}); extract them with "
                "`captioner extract --model MODEL_DIR`"
            )
        if key == "top_blocks":
            raise CheckpointError(
                f"backbone mismatch: these are the maps before the backbone's last {a or e} "
                "blocks (`extract --top-blocks`), made for `train --fine-tune-blocks`; a model "
                "reads the final grid (`extract` without --top-blocks, or --model MODEL_DIR)"
            )
        raise CheckpointError(
            f"backbone mismatch on {key!r}: the model was trained on features with {e!r}, "
            f"this backbone gives {a!r}"
        )
