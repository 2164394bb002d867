"""Atomic file writes, hashing and strict safetensors loading: a reader never sees a half-written
file, and weights that do not fit a model are refused with a message naming the file."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from captioner.errors import CheckpointError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``.

    The temporary file is ``.NAME.PID.XXXX.tmp``; after the rename, those of ``path`` left
    by processes that no longer run (killed mid-write) are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; written files are ordinary data files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    _remove_orphaned_temporaries(path)


def _remove_orphaned_temporaries(path: Path) -> None:
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = leftover.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            leftover.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would signal the process there: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (PermissionError), or cannot tell
        return True
    return True


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> str:
    """Save tensors as safetensors atomically; return the sha256 of the bytes written."""
    data = safetensors_bytes(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata
    )
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_document(
    path: Path, fmt: str, version: int | None, what: str, missing: str
) -> dict[str, Any]:
    """Read a JSON file of ours: an object whose "format" is ``fmt`` (and "version" ``version``).

    Any problem is a ``CheckpointError`` naming the file; ``missing`` is the message when the
    file does not exist and ``what`` names the document in the others.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {missing}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise CheckpointError(f"{path}: not a {what}")
    if version is not None and data.get("version") != version:
        raise CheckpointError(f"{path}: unsupported {what} version {data.get('version')!r}")
    return data


def verify_sha256(path: Path, expected: str | None, recorded_in: Path) -> str:
    """Return the file's sha256, refusing it when it differs from the one ``recorded_in`` holds."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise CheckpointError(
            f"{path}: checksum differs from {recorded_in} (file corrupt, truncated or replaced)"
        )
    return actual


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights strictly, with a clear message on any mismatch."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit this model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {list(tensor.shape)}, the model expects "
                f"{list(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
