"""Pydantic models of the JSON the API returns (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Timings(BaseModel):
    """Milliseconds spent on each stage of a request (the model stage is shared by a batch)."""

    read_ms: float = Field(description="receiving and decoding the uploaded images")
    queue_ms: float = Field(description="waiting for the model worker")
    denoise_ms: float = Field(0.0, description="denoising, when asked for")
    model_ms: float = Field(description="CNN and decoder on the worker's batch")
    total_ms: float = Field(description="from the request's arrival to the answer")
    batch_images: int = Field(description="images in the model batch this request was part of")


class ImageCaption(BaseModel):
    """The caption of one uploaded image."""

    image: str = Field(description="the upload's file name, as sent (never used on disk)")
    width: int
    height: int
    caption: str
    tokens: list[str]
    scores: list[float] = Field(description="log-probability of each token")
    log_prob: float = Field(description="log-probability of the whole caption (with <end>)")
    finished: bool = Field(description="False when the caption was cut at max_length")
    grid: tuple[int, int] = Field(description="rows and columns of the attention grids")
    attention: list[list[list[float]]] | None = Field(
        None, description="per token, its attention over the grid ([rows][cols], sums to 1)"
    )
    denoised_image: str | None = Field(
        None, description="the denoised picture the model saw, as a PNG data URL"
    )


class CaptionResponse(BaseModel):
    """Captions of the uploaded images, in upload order.

    The top-level ``caption``, ``tokens``, ``scores``, ``attention`` and ``grid`` are those of
    the first image (the whole answer when one image is sent); ``results`` has every image.
    """

    caption: str
    tokens: list[str]
    scores: list[float]
    attention: list[list[list[float]]] | None = None
    grid: tuple[int, int]
    results: list[ImageCaption]
    settings: dict[str, Any]
    timings: Timings


class ErrorResponse(BaseModel):
    """Any refused request: ``detail`` says what was wrong, ``code`` is stable for clients."""

    detail: str = Field(description="what was wrong, for people (the wording may change)")
    code: str = Field(
        description="why, for programs: stable (`no_image`, `busy`, ...; each status lists its own)"
    )


class HealthResponse(BaseModel):
    status: str
    uptime_s: float
    queued: int
    max_queue: int
    served: int
    denoiser: bool
    device: str
    threads: int


class ModelResponse(BaseModel):
    backbone: dict[str, Any]
    vocab_size: int
    decoder: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any] | None
    denoiser: bool
    limits: dict[str, Any]


class Sample(BaseModel):
    id: str
    name: str
    url: str
