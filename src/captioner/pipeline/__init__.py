"""The chain over an archive: sort (model 1) -> clean (model 2) -> caption (model 3), into an
SQLite catalogue with full-text search over the captions and a static review page.

```python
from captioner.pipeline import Pipeline

pipeline = Pipeline(classifier, denoiser, captioner)   # any of the three may be None (not all)
for result in pipeline.run(["scans/"]):
    print(result.path, result.kind, result.caption, result.error)
```

The names below are imported on first use, so that the CLI parser stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captioner.pipeline.catalogue import Catalogue
    from captioner.pipeline.chain import FileResult, Pipeline
    from captioner.pipeline.run import run_archive
    from captioner.pipeline.settings import PipelineSettings

__all__ = ["Catalogue", "FileResult", "Pipeline", "PipelineSettings", "run_archive"]

_HOMES = {
    "Catalogue": "captioner.pipeline.catalogue",
    "FileResult": "captioner.pipeline.chain",
    "Pipeline": "captioner.pipeline.chain",
    "PipelineSettings": "captioner.pipeline.settings",
    "run_archive": "captioner.pipeline.run",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'captioner.pipeline' has no attribute {name!r}")
