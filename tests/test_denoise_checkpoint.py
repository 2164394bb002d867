"""Denoiser folders: safetensors + JSON, identified by the weights' sha256, foreign ones refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from denoise_tiny import active_denoiser, one_thread, smooth_picture  # noqa: F401
from PIL import Image

from captioner.denoise import Denoiser, load_denoiser
from captioner.errors import CheckpointError


def test_round_trip(tmp_path: Path) -> None:
    folder = active_denoiser(tmp_path / "dn")
    denoiser = load_denoiser(folder)
    assert isinstance(denoiser, Denoiser)
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert denoiser.weights_id == sha
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "captioner-denoiser" and config["weights_sha256"] == sha
    picture = Image.fromarray(smooth_picture(30, 41))
    out = denoiser(picture)
    assert out.size == picture.size and out.mode == "RGB"
    assert np.abs(np.asarray(out, np.int16) - np.asarray(picture, np.int16)).mean() > 1


def test_run_folder_is_accepted(tmp_path: Path) -> None:
    active_denoiser(tmp_path / "run" / "model")
    assert load_denoiser(tmp_path / "run").weights_id


def test_corrupt_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    folder = active_denoiser(tmp_path / "dn")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_denoiser(folder)

    with pytest.raises(CheckpointError):
        load_denoiser(tmp_path / "absent")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"weights": torch.zeros(3)}, pickled / "model.safetensors")
    (pickled / "config.json").write_text(json.dumps({"format": "captioner-model", "version": 1}))
    with pytest.raises(CheckpointError, match="not a captioner denoiser"):
        load_denoiser(pickled)

    folder = active_denoiser(tmp_path / "dn2")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["widths"] = [4, 8]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit|shape"):
        load_denoiser(folder)

    config["model"] = {"widths": [8, 16], "depths": [1]}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="architecture"):
        load_denoiser(folder)

    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_denoiser(folder)
