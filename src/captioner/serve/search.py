"""``GET /v1/search``: ranked full-text search over a pipeline catalogue's captions.

Added to the app when ``captioner serve`` is given ``--catalogue DIR`` (a folder written by
``captioner pipeline``). Each request opens the database read-only, so the service never holds
a write lock and sees the rows of a pipeline run that is still going.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's signature at run
time, and its annotations use local values (the catalogue's kinds).
"""

from pathlib import Path
from typing import Annotated

import anyio
from fastapi import FastAPI, Query

from captioner.errors import CaptionerError
from captioner.pipeline.catalogue import Catalogue
from captioner.serve.errors import ApiError, refusals
from captioner.serve.fields import QueryBool
from captioner.serve.schemas import SearchHitOut, SearchResponse

SEARCH_ERRORS = refusals(
    {
        422: "`invalid_request` (a parameter out of range or of the wrong type: `detail` names it)",
        503: "`catalogue_unavailable` (the database cannot be read right now)",
    }
)
MAX_LIMIT = 100


def catalogue_kinds(folder: Path) -> list[str]:
    """Open the catalogue once (a clear error now rather than on the first search) and return
    the kinds its classifier knows (empty for a catalogue made without one)."""
    with Catalogue.open(folder, readonly=True) as catalogue:
        classes = catalogue.signature.get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else []


def add_search(app: FastAPI, folder: Path) -> None:
    kinds = catalogue_kinds(folder)
    kind_schema = {"enum": kinds} if kinds else {}

    def search_now(q: str, limit: int, kind: str | None, all_words: bool) -> SearchResponse:
        try:
            with Catalogue.open(folder, readonly=True) as catalogue:
                hits = catalogue.search(q, limit, kind, all_words)
                path = str(catalogue.path)
        except CaptionerError as exc:
            raise ApiError(503, "catalogue_unavailable", str(exc)) from None
        return SearchResponse(
            query=q, catalogue=path, hits=[SearchHitOut(**hit.__dict__) for hit in hits]
        )

    @app.get(
        "/v1/search",
        response_model=SearchResponse,
        responses=SEARCH_ERRORS,
        summary="Captions of the catalogue that match free text, best first (FTS5, bm25)",
    )
    async def search(
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=500,
                description="free text; any word may match (more and rarer words rank higher)",
            ),
        ],
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
        kind: Annotated[
            str | None, Query(description="only files of this kind", json_schema_extra=kind_schema)
        ] = None,
        all_words: Annotated[QueryBool, Query(description="every word must match")] = False,
    ) -> SearchResponse:
        if kind is not None and kinds and kind not in kinds:
            raise ApiError(422, "invalid_request", f"kind: not one of {', '.join(kinds)}")
        return await anyio.to_thread.run_sync(search_now, q, limit, kind, all_words)
