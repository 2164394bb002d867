"""Exceptions for user-facing errors.

Every error a user can cause (bad file, wrong checkpoint, mismatched cache) derives from
``CaptionerError``; the CLI prints its message without a traceback and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path


class CaptionerError(Exception):
    """An error caused by the user's input, reported as one clear message."""


class DatasetError(CaptionerError):
    """An annotation file or manifest cannot be read."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageLoadError(CaptionerError):
    """An image file cannot be decoded into an RGB picture."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CacheMismatchError(CaptionerError):
    """A feature cache was written with another backbone, weights or preprocessing."""


class CheckpointError(CaptionerError):
    """A checkpoint is missing, corrupt, not ours, or incompatible with the data."""
