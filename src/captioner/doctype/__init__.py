"""Model 1 of the chain: the document-type classifier (photo, painting, schematic, sketch,
text, or whatever classes its training folders name)."""

from __future__ import annotations

from typing import Any

__all__ = ["DocTypeClassifier", "DocTypePrediction"]


def __getattr__(name: str) -> Any:  # lazy: the CLI imports this package without torch
    if name in __all__:
        from captioner.doctype import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
