"""Turning the worker's output into the JSON answer of ``POST /v1/caption``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from captioner.caption.captioner import CaptionResult
from captioner.serve.denoising import png_data_url
from captioner.serve.schemas import (
    CaptionResponse,
    ClassifiedImage,
    ClassifyResponse,
    ImageCaption,
    ImageKind,
    Timings,
)
from captioner.serve.uploads import Upload
from captioner.serve.worker import JobOutput

if TYPE_CHECKING:
    from captioner.doctype.classifier import DocTypePrediction


def caption_response(
    uploads: list[Upload],
    pictures: list[Image.Image],
    output: JobOutput,
    *,
    attention: bool,
    settings: dict[str, Any],
    read_ms: float,
    total_ms: float,
) -> CaptionResponse:
    """The answer: the first image's fields at the top level, every image in ``results``."""
    results = [
        image_caption(upload, picture, result, attention, denoised, kind)
        for upload, picture, result, denoised, kind in zip(
            uploads,
            pictures,
            output.results,
            output.denoised or [None] * len(uploads),
            output.kinds or [None] * len(uploads),
            strict=True,
        )
    ]
    first = results[0]
    return CaptionResponse(
        caption=first.caption,
        tokens=first.tokens,
        scores=first.scores,
        attention=first.attention,
        grid=first.grid,
        results=results,
        settings=settings,
        timings=_timings(output, read_ms, total_ms),
    )


def image_caption(
    upload: Upload,
    picture: Image.Image,
    result: CaptionResult | None,
    attention: bool,
    denoised: Image.Image | None,
    kind: DocTypePrediction | None = None,
) -> ImageCaption:
    shown_kind = image_kind(kind) if kind is not None else None
    if result is None:
        return ImageCaption(
            image=upload.name,
            width=picture.width,
            height=picture.height,
            captioned=False,
            kind=shown_kind,
            caption=None,
            tokens=[],
            scores=[],
            log_prob=None,
            finished=None,
            grid=(0, 0),
        )
    return ImageCaption(
        image=upload.name,
        width=picture.width,
        height=picture.height,
        kind=shown_kind,
        caption=result.caption,
        tokens=result.tokens,
        scores=[round(float(x), 5) for x in result.token_log_probs],
        log_prob=round(float(result.log_prob), 5),
        finished=result.finished,
        grid=result.grid,
        attention=attention_grids(result) if attention else None,
        denoised_image=png_data_url(denoised) if denoised is not None else None,
    )


def image_kind(prediction: DocTypePrediction) -> ImageKind:
    return ImageKind(**prediction.to_dict(), description=prediction.describe())


def classify_response(
    uploads: list[Upload],
    pictures: list[Image.Image],
    output: JobOutput,
    *,
    read_ms: float,
    total_ms: float,
) -> ClassifyResponse:
    assert output.kinds is not None
    return ClassifyResponse(
        results=[
            ClassifiedImage(
                image=upload.name, width=picture.width, height=picture.height, kind=image_kind(k)
            )
            for upload, picture, k in zip(uploads, pictures, output.kinds, strict=True)
        ],
        timings=_timings(output, read_ms, total_ms),
    )


def _timings(output: JobOutput, read_ms: float, total_ms: float) -> Timings:
    return Timings(
        read_ms=round(read_ms, 2),
        queue_ms=round(output.queue_ms, 2),
        denoise_ms=round(output.denoise_ms, 2),
        model_ms=round(output.model_ms, 2),
        total_ms=round(total_ms, 2),
        batch_images=output.batch_images,
    )


def attention_grids(result: CaptionResult) -> list[list[list[float]]]:
    """[tokens][rows][cols] attention weights, rounded to 5 decimals."""
    h, w = result.grid
    att = np.nan_to_num(np.asarray(result.attention, dtype=np.float64))
    return att.reshape(len(result.tokens), h, w).round(5).tolist()
