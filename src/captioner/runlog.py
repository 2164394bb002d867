"""What a long run (training, extraction, the pipeline) writes while it goes: console lines
that do not break tqdm's bars, progress bars with a machine-readable twin, and TensorBoard
scalars.

Set ``CAPTIONER_PROGRESS_FILE`` to a path and every :class:`Progress` bar appends one JSON
line per step to it, ``{"bar": "epoch 3", "done": 17, "total": 24}``: what scripts and tests
read instead of parsing the bar's text (which changes with tqdm's versions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

PROGRESS_FILE_ENV = "CAPTIONER_PROGRESS_FILE"

T = TypeVar("T")


def say(progress: bool, message: str) -> None:
    """Print a line above the progress bar when bars are shown, else a plain flushed line."""
    if progress:
        tqdm.write(message)
    else:
        print(message, flush=True)


def tensorboard_writer(folder: Path) -> Any | None:
    """A SummaryWriter for ``folder``; None where tensorboard is not importable (it is a
    dependency, but runs stay usable without it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


class Progress(Generic[T]):
    """A tqdm bar (shown or not) that also reports each step to ``CAPTIONER_PROGRESS_FILE``.

    Iterate over it (``for x in Progress(items, desc=...)``) or call ``update(n)``.
    """

    def __init__(
        self, iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _length(iterable)
        self.done = 0
        self._bar = tqdm(desc=desc, total=self.total, **kwargs)
        path = os.environ.get(PROGRESS_FILE_ENV)
        self._events = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this Progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self._bar.update(n)
        self.done += n
        if self._events is not None:
            record = {"bar": self.desc, "done": self.done, "total": self.total}
            self._events.write(json.dumps(record) + "\n")
            self._events.flush()

    def set_postfix(self, **values: Any) -> None:
        self._bar.set_postfix(**values)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self._bar.set_postfix_str(text, refresh=refresh)

    def close(self) -> None:
        self._bar.close()
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
