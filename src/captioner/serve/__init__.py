"""HTTP API and web page of ``captioner serve`` (FastAPI; one model worker thread).

``create_app(captioner, denoiser=None, ...)`` builds the application; ``captioner serve`` runs it
with uvicorn. FastAPI, uvicorn and python-multipart are imported only here, so the rest of the
package works without them.
"""

from __future__ import annotations

from captioner.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
