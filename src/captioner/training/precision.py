"""Mixed precision (bf16 / fp16 autocast, GradScaler) and ``torch.compile`` for the training loop.

``fp32`` changes nothing. ``auto`` picks for the device: bf16 on a CPU with native bf16
(oneDNN's AVX-512 paths; on an AVX2-only CPU bf16 is emulated and ~35x slower than fp32, see
docs/BENCHMARKS.md), else fp32; bf16 on a CUDA device that supports it, else fp16. ``bf16``
runs the forward pass under ``torch.autocast`` on CPU or CUDA (same exponent range as fp32: no
loss scaling needed). ``fp16`` needs CUDA and scales the loss
with ``torch.amp.GradScaler`` so small gradients do not underflow. The loss itself is always
computed in fp32 from the (possibly low-precision) logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from captioner.errors import CaptionerError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (else it is emulated, and slow)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``name``, or for ``auto`` the precision that pays on ``device``."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and native_cpu_bf16():
        return "bf16"
    return "fp32"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context and optional gradient scaler of one training run."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise CaptionerError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
        name = resolve_precision(name, device)
        if name == "fp16" and device.type != "cuda":
            raise CaptionerError(
                f"precision fp16 needs a CUDA device (this run uses {device}); "
                "use precision=bf16 on CPU, or fp32"
            )
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CaptionerError(
                f"precision bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                "use fp16 or fp32"
            )
        if name != "fp32" and device.type not in ("cpu", "cuda"):
            raise CaptionerError(f"precision {name} is supported on cpu and cuda, not {device}")
        self.name = name
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.name]):
            yield

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        parameters: Callable[[], Any],
        grad_clip: float,
    ) -> None:
        """``loss.backward()``, clipping and ``optimizer.step()`` (scaled for fp16)."""
        if self.scaler is None:
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters(), grad_clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters(), grad_clip)
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class CompiledForward:
    """``torch.compile`` of a module's forward that falls back to eager if compiling fails.

    Compilation errors only surface at the first call (missing C++ compiler, unsupported
    platform or op); the step then reruns eagerly, a one-line notice is printed and the rest of
    the run stays eager.
    """

    def __init__(self, module: torch.nn.Module, notify: Callable[[str], None]) -> None:
        self.module = module
        self.notify = notify
        if not hasattr(torch, "compile"):
            raise CaptionerError("compile=true needs torch >= 2.0")
        self.compiled: Callable[..., Any] | None = torch.compile(module)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except (KeyboardInterrupt, CaptionerError):
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.notify(
                    f"torch.compile failed ({type(exc).__name__}: {first[:200]}); "
                    "training continues without compilation"
                )
                self.compiled = None
        return self.module(*args)
