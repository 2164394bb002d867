"""The FastAPI application: the caption API, model information, samples and the web page.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint signatures at run
time, and their limits come from ``create_app``'s settings (closure variables).
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from captioner.caption.captioner import Captioner
from captioner.caption.decode_settings import DecodeSettings
from captioner.doctype.classifier import DocTypeClassifier
from captioner.serve.errors import ApiError, add_error_handlers, refusals, use_error_model
from captioner.serve.fields import FormBool
from captioner.serve.limits import BodyLimitMiddleware
from captioner.serve.modelinfo import classifier_summary, model_summary
from captioner.serve.responses import caption_response, classify_response
from captioner.serve.samples import available_samples, sample_png
from captioner.serve.schemas import (
    CaptionResponse,
    ClassifyResponse,
    HealthResponse,
    ModelResponse,
    Sample,
    ServeSettings,
)
from captioner.serve.uploads import decode_upload, read_uploads
from captioner.serve.worker import (
    Denoiser,
    JobOptions,
    JobOutput,
    ModelWorker,
    WorkerBusy,
    WorkerStopped,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The refusals of POST /v1/caption, with the codes each status carries (see uploads.py).
CAPTION_ERRORS = refusals(
    {
        400: "`no_denoiser` (`denoise` on a server without a denoiser), "
        "`bad_request` (a malformed multipart body)",
        413: "`too_large` (a file above the upload limit, or a body above the request limit), "
        "`too_many_images`",
        415: "`unsupported_image` (not an image, or a format the server does not decode)",
        422: "`no_image`, `empty_image`, `corrupt_image`, `image_too_large` (too many pixels), "
        "`invalid_request` (an option out of range or of the wrong type: `detail` names it)",
        500: "`model_error` (the model failed on this request's batch)",
        503: "`busy` (the queue is full: retry after `Retry-After` seconds), `stopped`",
        504: "`timeout` (the model did not answer in time)",
    }
)
CAPTION_ERRORS[503]["headers"] = {
    "Retry-After": {"description": "seconds to wait (with `busy`)", "schema": {"type": "integer"}}
}
CLASSIFY_ERRORS = refusals(
    {
        400: "`bad_request` (a malformed multipart body)",
        413: "`too_large` (a file above the upload limit, or a body above the request limit), "
        "`too_many_images`",
        415: "`unsupported_image` (not an image, or a format the server does not decode)",
        422: "`no_image`, `empty_image`, `corrupt_image`, `image_too_large` (too many pixels)",
        500: "`model_error` (the model failed on this request's batch)",
        503: "`busy` (the queue is full: retry after `Retry-After` seconds), `stopped`",
        504: "`timeout` (the model did not answer in time)",
    }
)
CLASSIFY_ERRORS[503]["headers"] = CAPTION_ERRORS[503]["headers"]
SAMPLE_ERRORS = refusals(
    {404: "`not_found` (no such sample)", 422: "`invalid_request` (e.g. an unknown `size`)"}
)


CAPTION_OPTIONS = ("beam_size", "max_length", "attention", "denoise", "caption_anyway")


async def refuse_empty_options(request: Request, names: tuple[str, ...]) -> None:
    """FastAPI reads an empty form field as a missing one (its default); the schema does not."""
    form = await request.form()  # already parsed for the endpoint: this is the same form
    empty = [name for name in names if form.get(name) == ""]
    if empty:
        problems = "; ".join(f"{name}: empty (leave it out for the default)" for name in empty)
        raise ApiError(422, "invalid_request", problems)


def create_app(
    captioner: Captioner,
    denoiser: Denoiser | None = None,
    settings: ServeSettings | None = None,
    classifier: DocTypeClassifier | None = None,
    catalogue: Path | None = None,
    **overrides: Any,
) -> FastAPI:
    """Build the app around a loaded ``captioner`` (and optional denoiser and document-type
    classifier: with one, every upload is classified first, only photos are captioned unless a
    request says ``caption_anyway``, and ``POST /v1/classify`` is offered). With ``catalogue``
    (a ``captioner pipeline`` output folder) ``GET /v1/search`` searches its captions.

    ``overrides`` replace fields of ``settings``, e.g. ``create_app(c, max_upload_bytes=2**20)``.
    The model worker thread starts here and stops with the app's lifespan.
    """
    settings = replace(settings or ServeSettings(), **overrides)
    worker = ModelWorker(
        captioner,
        denoiser,
        classifier,
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        batch_wait_s=settings.batch_wait_s,
    )
    worker.start()
    if settings.warm_up:
        worker.warm_up()
    limiter = anyio.CapacityLimiter(settings.decode_threads)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await anyio.to_thread.run_sync(worker.stop)

    # /docs and /redoc from the installed fastapi-offline's files, not a CDN: they work on
    # machines without internet access, like the rest of the service.
    app = FastAPIOffline(
        title="captioner",
        summary="Show, Attend and Tell image captions with per-word attention maps.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    add_error_handlers(app)
    default_openapi = app.openapi
    app.openapi = lambda: use_error_model(default_openapi())  # type: ignore[method-assign]
    # What the schema says of the uploads and options is what the code below enforces. The size
    # of a file is in the description: minLength/maxLength count characters, not bytes.
    upload_schema = {
        "type": "array",
        "minItems": 1,
        "maxItems": settings.max_images,
        "items": {"type": "string", "format": "binary"},
    }
    upload_description = (
        f"image files, repeat the field for several; each from 1 to {settings.max_upload_bytes:,}"
        " bytes, in a format the server decodes (JPEG, PNG, GIF, BMP, TIFF, WebP, ...: the"
        " content decides, not the file name or the part's type)"
    )
    if denoiser is None:
        denoise_field = Form(
            description="denoise each image first: this server has no denoiser (`no_denoiser`)",
            json_schema_extra={"enum": [False]},
        )
    else:
        denoise_field = Form(description="denoise each image first")
    sample_ids = list(available_samples())

    async def read_pictures(image: list[UploadFile]) -> tuple[list[Any], list[Any]]:
        uploads = await read_uploads(image, settings.max_upload_bytes, settings.max_images)
        pictures = [
            await anyio.to_thread.run_sync(
                lambda u=upload: decode_upload(
                    u, max_pixels=settings.max_pixels, max_side=settings.max_side
                ),
                limiter=limiter,
            )
            for upload in uploads
        ]
        return uploads, pictures

    @app.post(
        "/v1/caption",
        response_model=CaptionResponse,
        responses=CAPTION_ERRORS,
        summary="Caption one or several uploaded images",
    )
    async def caption(
        request: Request,
        image: Annotated[
            list[UploadFile],
            File(description=upload_description, json_schema_extra=upload_schema),
        ],
        beam_size: Annotated[int, Form(ge=1, le=settings.max_beam)] = DecodeSettings.beam_size,
        max_length: Annotated[int, Form(ge=1, le=settings.max_length)] = DecodeSettings.max_length,
        attention: Annotated[
            FormBool, Form(description="include per-token attention grids")
        ] = True,
        denoise: Annotated[FormBool, denoise_field] = False,
        caption_anyway: Annotated[
            FormBool,
            Form(
                description="caption images the classifier says are not photos too (servers "
                "without a classifier caption every image)"
            ),
        ] = False,
    ) -> CaptionResponse:
        t0 = time.perf_counter()
        await refuse_empty_options(request, CAPTION_OPTIONS)
        if denoise and denoiser is None:
            raise ApiError(
                400, "no_denoiser", "this server has no denoiser (start it with --denoise CKPT)"
            )
        uploads, pictures = await read_pictures(image)
        read_ms = (time.perf_counter() - t0) * 1000
        options = JobOptions(
            beam_size=beam_size,
            max_length=max_length,
            denoise=denoise,
            caption_anyway=caption_anyway,
        )
        output = await run_job(worker, pictures, options, settings.request_timeout_s)
        return await anyio.to_thread.run_sync(
            lambda: caption_response(
                uploads,
                pictures,
                output,
                attention=attention,
                settings={
                    "beam_size": beam_size,
                    "max_length": max_length,
                    "denoise": denoise,
                    **({"caption_anyway": caption_anyway} if classifier is not None else {}),
                },
                read_ms=read_ms,
                total_ms=(time.perf_counter() - t0) * 1000,
            ),
            limiter=limiter,
        )

    if classifier is not None:

        @app.post(
            "/v1/classify",
            response_model=ClassifyResponse,
            responses=CLASSIFY_ERRORS,
            summary="The kind of each uploaded image (photo, painting, schematic, ...)",
        )
        async def classify(
            image: Annotated[
                list[UploadFile],
                File(description=upload_description, json_schema_extra=upload_schema),
            ],
        ) -> ClassifyResponse:
            t0 = time.perf_counter()
            uploads, pictures = await read_pictures(image)
            read_ms = (time.perf_counter() - t0) * 1000
            output = await run_job(
                worker, pictures, JobOptions(caption=False), settings.request_timeout_s
            )
            return classify_response(
                uploads,
                pictures,
                output,
                read_ms=read_ms,
                total_ms=(time.perf_counter() - t0) * 1000,
            )

    if catalogue is not None:
        from captioner.serve.search import add_search

        add_search(app, Path(catalogue))

    @app.get("/v1/health", response_model=HealthResponse, summary="Liveness and queue state")
    async def health() -> HealthResponse:
        return HealthResponse(
            status="ok" if worker.alive else "stopped",
            uptime_s=round(time.time() - started, 1),
            queued=worker.queued,
            max_queue=worker.max_queue,
            served=worker.served,
            denoiser=denoiser is not None,
            classifier=classifier is not None,
            catalogue=catalogue is not None,
            device=str(captioner.device),
            threads=torch.get_num_threads(),
        )

    @app.get("/v1/model", response_model=ModelResponse, summary="What model is served")
    async def model() -> ModelResponse:
        summary = model_summary(captioner, settings, denoiser is not None)
        return ModelResponse(**summary, classifier=classifier_summary(classifier))

    @app.get("/v1/samples", response_model=list[Sample], summary="Sample pictures for the page")
    async def samples() -> list[Sample]:
        return [
            Sample(id=key, name=label, url=f"/v1/samples/{key}")
            for key, (label, _) in available_samples().items()
        ]

    @app.get(
        "/v1/samples/{sample_id}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **SAMPLE_ERRORS},
        summary="One sample picture (PNG)",
    )
    async def sample(
        sample_id: Annotated[str, PathParam(json_schema_extra={"enum": sample_ids})],
        size: Literal["full", "thumb"] = "full",
    ) -> Response:
        if sample_id not in available_samples():
            raise ApiError(404, "not_found", f"no sample {sample_id[:40]!r}")
        data = await anyio.to_thread.run_sync(sample_png, sample_id, size == "thumb")
        assert data is not None
        headers = {"Cache-Control": "public, max-age=86400"}
        return Response(data, media_type="image/png", headers=headers)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def run_job(
    worker: ModelWorker, pictures: list[Any], options: JobOptions, timeout_s: float
) -> JobOutput:
    """Queue the pictures for the model worker and wait for them, mapping failures to errors."""
    try:
        future = worker.submit(pictures, options)
    except WorkerBusy as exc:
        raise ApiError(
            503, "busy", f"the server is busy ({exc}); retry shortly", {"Retry-After": "1"}
        ) from None
    except WorkerStopped as exc:
        raise ApiError(503, "stopped", str(exc)) from None
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=timeout_s)
    except TimeoutError:
        raise ApiError(504, "timeout", "the model did not answer in time") from None
    except WorkerStopped as exc:
        raise ApiError(503, "stopped", str(exc)) from None
    except Exception as exc:  # logged by the worker; the client gets a JSON 500
        raise ApiError(500, "model_error", f"captioning failed: {type(exc).__name__}") from None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("captioner")
    except Exception:
        return "0"
