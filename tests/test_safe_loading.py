"""Loading a file that is not ours is refused with a clear error and never runs its code.

Every "hostile" file here is a pickle whose ``__reduce__`` would create a marker file when
unpickled: the tests check the refusal *and* that the marker never appears. Checksums in the
JSON side files are updated where noted, so the loader really parses the hostile bytes
instead of stopping at the checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from captioner.caption.captioner import Captioner
from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.cli import main
from captioner.errors import CaptionerError, CheckpointError


class Hostile:
    """Unpickling this calls ``open(marker, "w")``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def hostile_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": Hostile(marker)})


def hostile_torch_file(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"features.0.0.weight": Hostile(marker)}, buffer)
    return buffer.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def reseal(folder: Path, key: str = "weights_sha256", name: str = "model.safetensors") -> None:
    """Record the current weights' checksum in config.json, as a forger would."""
    edit_json(folder / "config.json", lambda c: c.__setitem__(key, sha256(folder / name)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serve_support import build_tiny_captioner

    folder = tmp_path_factory.mktemp("safe") / "model"
    build_tiny_captioner(folder)
    return folder


def other_weights(folder: Path, **sizes: int) -> None:
    config = json.loads((folder / "config.json").read_text())["model"]
    model = ShowAttendTell(ModelConfig(**{**config, **sizes}))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )


def tamper_pickle(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").write_bytes(hostile_pickle(marker))
    reseal(folder)


def tamper_torch_zip(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").write_bytes(hostile_torch_file(marker))
    reseal(folder)


def tamper_unsealed_pickle(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").write_bytes(hostile_pickle(marker))


def tamper_truncated(folder: Path, marker: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def tamper_truncated_resealed(folder: Path, marker: Path) -> None:
    tamper_truncated(folder, marker)
    reseal(folder)


def tamper_shapes(folder: Path, marker: Path) -> None:
    other_weights(folder, hidden_dim=24)
    reseal(folder)


def tamper_config_sizes(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c["model"].__setitem__("hidden_dim", 64))


def tamper_keys(folder: Path, marker: Path) -> None:
    save_file({"encoder.weight": torch.zeros(2, 2)}, folder / "model.safetensors")
    reseal(folder)


def tamper_vocab(folder: Path, marker: Path) -> None:
    edit_json(folder / "vocab.json", lambda v: v["tokens"].__setitem__(-1, "zebra"))


def tamper_vocab_size(folder: Path, marker: Path) -> None:
    def grow(vocab: dict) -> None:
        vocab["tokens"].append("zebra")

    edit_json(folder / "vocab.json", grow)

    def refingerprint(config: dict) -> None:
        from captioner.data.vocabulary import Vocabulary

        config["vocabulary_fingerprint"] = Vocabulary.load(folder / "vocab.json").fingerprint()

    edit_json(folder / "config.json", refingerprint)


def tamper_backbone(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c["backbone"].__setitem__("weights_id", "imagenet"))


def tamper_backbone_name(folder: Path, marker: Path) -> None:
    def change(config: dict) -> None:
        config["backbone"].update(backbone="resnet50", channels=2048)

    edit_json(folder / "config.json", change)


def tamper_config_not_json(folder: Path, marker: Path) -> None:
    (folder / "config.json").write_bytes(hostile_pickle(marker))


def tamper_config_format(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c.__setitem__("format", "something-else"))


def tamper_config_model_type(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c.__setitem__("model", 42))


def tamper_config_backbone_type(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c.__setitem__("backbone", ["mobilenet_v2"]))


def tamper_config_model_values(folder: Path, marker: Path) -> None:
    edit_json(folder / "config.json", lambda c: c["model"].__setitem__("hidden_dim", "large"))


#: (tampering, what the refusal must say, which file it must name)
TAMPERINGS = [
    (tamper_pickle, "not a readable safetensors file", "model.safetensors"),
    (tamper_torch_zip, "not a readable safetensors file", "model.safetensors"),
    (tamper_unsealed_pickle, "checksum differs", "model.safetensors"),
    (tamper_truncated, "checksum differs", "model.safetensors"),
    (tamper_truncated_resealed, "not a readable safetensors file", "model.safetensors"),
    (tamper_shapes, "the model expects", "model.safetensors"),
    (tamper_config_sizes, "the model expects", "model.safetensors"),
    (tamper_keys, "weights do not fit this model", "model.safetensors"),
    (tamper_vocab, "not the one the model was trained with", "vocab.json"),
    (tamper_vocab_size, "words but the model expects", "vocab.json"),
    (tamper_backbone, "backbone mismatch on 'weights_id'", None),
    (tamper_backbone_name, "the backbone gives 49 regions of 2048 channels", "config.json"),
    (tamper_config_not_json, "not valid JSON", "config.json"),
    (tamper_config_format, "not a captioner model config", "config.json"),
    (tamper_config_model_type, "'model' must be an object", "config.json"),
    (tamper_config_backbone_type, "'backbone' must be an object", "config.json"),
    (tamper_config_model_values, "invalid model config", "config.json"),
]


@pytest.mark.parametrize(
    ("tamper", "message", "names"), TAMPERINGS, ids=lambda x: getattr(x, "__name__", None)
)
def test_tampered_model_folders_are_refused_without_running_code(
    model_dir: Path, tmp_path: Path, tamper: Callable, message: str, names: str | None
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "code-ran"
    tamper(folder, marker)
    with pytest.raises(CheckpointError) as info:
        Captioner.from_pretrained(folder, backbone_weights="none")
    assert message in str(info.value)
    if names:
        assert str(folder / names) in str(info.value)
    # the CLI says the same in one line, without a traceback
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["caption", str(tmp_path / "x.jpg"), "--model", str(folder)])
    # (x.jpg does not exist: the model is loaded and refused first, or the path is refused)
    assert code == 2 and "Traceback" not in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    assert not marker.exists()


def test_untouched_copy_loads(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "model")
    captioner = Captioner.from_pretrained(tmp_path / "model", backbone_weights="none")
    assert captioner.backbone is not None


def test_training_state_pickle_is_refused(tmp_path: Path) -> None:
    from captioner.training.checkpoint import load_training_state, save_training_state

    model = ShowAttendTell(
        ModelConfig(
            vocab_size=10,
            feature_channels=8,
            num_regions=4,
            encoder_dim=8,
            embed_dim=8,
            attention_dim=8,
            hidden_dim=8,
        )
    )
    optimizer = torch.optim.Adam(model.parameters())
    save_training_state(tmp_path, model, optimizer, None, {"epoch": 1})
    marker = tmp_path / "code-ran"
    (tmp_path / "state.safetensors").write_bytes(hostile_pickle(marker))
    with pytest.raises(CheckpointError, match="does not match"):
        load_training_state(tmp_path, model, optimizer, None)
    edit_json(
        tmp_path / "state.json",
        lambda s: s.__setitem__("tensors_sha256", sha256(tmp_path / "state.safetensors")),
    )
    with pytest.raises(CheckpointError, match="unreadable"):
        load_training_state(tmp_path, model, optimizer, None)
    (tmp_path / "state.json").write_bytes(hostile_pickle(marker))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_training_state(tmp_path, model, optimizer, None)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_backbone_weights_pickles_are_refused(tmp_path: Path) -> None:
    from captioner.vision.backbones import load_backbone

    marker = tmp_path / "code-ran"
    for name, data in (
        ("evil.pth", hostile_torch_file(marker)),
        ("evil.pt", hostile_pickle(marker)),
        ("evil.safetensors", hostile_pickle(marker)),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CaptionerError, match="cannot read weights") as info:
            load_backbone("mobilenet_v2", str(tmp_path / name))
        assert str(tmp_path / name) in str(info.value)
    assert not marker.exists()


def test_denoiser_pickle_is_refused(tmp_path: Path) -> None:
    from denoise_tiny import active_denoiser

    from captioner.denoise.denoiser import load_denoiser

    folder = active_denoiser(tmp_path / "denoiser")
    marker = tmp_path / "code-ran"
    (folder / "model.safetensors").write_bytes(hostile_torch_file(marker))
    with pytest.raises(CheckpointError, match="checksum differs"):
        load_denoiser(folder)
    reseal(folder)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_denoiser(folder)
    assert not marker.exists()
