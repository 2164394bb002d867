"""Resumable training state: weights, optimizer, scheduler, RNGs, epoch and early stopping.

Tensors go to ``state.safetensors`` and everything else to ``state.json`` (never pickle).
``state.json`` is written last and records the sha256 of the tensor file, so a state whose
files do not belong together (a kill between the two writes) is refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from captioner.errors import CaptionerError, CheckpointError
from captioner.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    read_json_document,
    sha256_file,
)

TENSORS = "state.safetensors"
META = "state.json"
FORMAT = "captioner-training-state"


def save_training_state(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    progress: dict[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for param_id, slots in opt_state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{name}"] = value
            else:
                opt_scalars.setdefault(str(param_id), {})[name] = value
    np_state = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    sha = atomic_save_safetensors(tensors, folder / TENSORS)
    py_state = random.getstate()
    meta = {
        "format": FORMAT,
        "tensors_sha256": sha,
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": opt_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "progress": progress,
    }
    atomic_write_json(folder / META, meta)


def has_training_state(folder: Path) -> bool:
    return (folder / META).is_file()


def check_resume(run_dir: Path, resume: bool, what: str) -> Path:
    """The state folder ``run_dir/checkpoint``, refusing to overwrite a run without ``resume``
    and to resume where there is nothing to resume; ``what`` names the run ("a training run")."""
    state_dir = run_dir / "checkpoint"
    if has_training_state(state_dir) and not resume:
        raise CaptionerError(
            f"{run_dir} already holds {what}; pass --resume to continue it or choose another --out"
        )
    if resume and not has_training_state(state_dir):
        raise CaptionerError(f"{state_dir}: nothing to resume (no training state found)")
    return state_dir


def check_resumed_settings(
    recorded: Path, current: dict[str, Any], may_change: set[str], what: str
) -> None:
    """Refuse to resume a run with other settings than it started with (``recorded``, a JSON
    object), except those in ``may_change`` (paths, devices, the epoch budget...): a resumed
    run must be the run that was interrupted, not another one on top of its state."""
    try:
        before = json.loads(recorded.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptionerError(
            f"{recorded}: missing, so the settings {what} started with are unknown"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionerError(f"{recorded}: unreadable settings ({exc})") from None
    if not isinstance(before, dict):
        raise CaptionerError(f"{recorded}: unreadable settings (not a JSON object)")
    before, current = _flat(before), _flat(current)
    differ = [  # settings the record lacks (added by a later version) are not compared
        f"{name}: {before[name]!r} then, {value!r} now"
        for name, value in current.items()
        if name.split(".")[0] not in may_change and name in before and before[name] != value
    ]
    if differ:
        allowed = ", ".join(sorted(may_change))
        raise CaptionerError(
            f"cannot resume {what} with other settings than {recorded} records "
            f"({'; '.join(differ)}): pass the same settings (the same --config/--set/options) "
            f"or start a new run in another --out. These may change on resume: {allowed}"
        )


def load_training_state(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
) -> dict[str, Any]:
    """Restore everything saved by ``save_training_state``; return the progress dict."""
    meta_path, tensor_path = folder / META, folder / TENSORS
    meta = read_json_document(
        meta_path,
        FORMAT,
        None,
        "captioner training state",
        missing="no training state to resume from",
    )
    if not tensor_path.is_file() or sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path}: missing or does not match {meta_path}")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensor_path}: unreadable ({exc})") from None

    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{tensor_path}: weights do not fit this model ({exc})") from None

    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            slots.setdefault(int(param_id), {})[name] = value
    for param_id, scalars in meta["optimizer_scalars"].items():
        slots.setdefault(int(param_id), {}).update(scalars)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])

    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    name, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state(
        (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return dict(meta["progress"])


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Nested settings (``model: {dropout: 0.3}``) as dotted names (``model.dropout``)."""
    flat: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update({f"{name}.{k}": v for k, v in _flat(value).items()})
        else:
            flat[name] = value
    return flat
