"""The service's settings, and the pydantic models of the JSON the API returns (they also make
the OpenAPI schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class ServeSettings:
    """Limits and knobs of the service (``captioner serve`` options map onto these)."""

    max_upload_bytes: int = 10 * 2**20  # per image file
    max_images: int = 8  # per request
    max_pixels: int = 40_000_000  # decoded size; above it an image is a possible bomb
    max_side: int = 1024  # decoded pictures are shrunk to this before queueing
    max_beam: int = 10
    max_length: int = 60
    max_queue: int = 64  # requests waiting for the model; more get 503
    max_batch: int = 8  # images per model call
    batch_wait_s: float = 0.002  # how long a lone request waits for company
    decode_threads: int = 2  # uploads decoded in parallel
    request_timeout_s: float = 120.0
    warm_up: bool = False
    metrics: dict[str, Any] | None = None  # shown by /v1/model (e.g. an evaluate report)

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes * self.max_images + 64 * 2**10


class Timings(BaseModel):
    """Milliseconds spent on each stage of a request (the model stage is shared by a batch)."""

    read_ms: float = Field(description="receiving and decoding the uploaded images")
    queue_ms: float = Field(description="waiting for the model worker")
    denoise_ms: float = Field(0.0, description="denoising, when asked for")
    model_ms: float = Field(description="CNN and decoder on the worker's batch")
    total_ms: float = Field(description="from the request's arrival to the answer")
    batch_images: int = Field(description="images in the model batch this request was part of")


class ImageKind(BaseModel):
    """What the document-type classifier says of one image (servers started with one)."""

    kind: str = Field(description="the kind decided: the photo class at or above the threshold")
    probability: float = Field(description="calibrated probability of that kind")
    is_photo: bool = Field(description="P(photo) reached the server's photo threshold")
    photo_probability: float
    probabilities: dict[str, float] = Field(description="every class's probability")
    description: str = Field(description='for people, e.g. "Schematics, 96 % — not a photo"')


class ImageCaption(BaseModel):
    """The caption of one uploaded image (and its kind, on a server with a classifier)."""

    image: str = Field(description="the upload's file name, as sent (never used on disk)")
    width: int
    height: int
    captioned: bool = Field(
        True, description="False when the classifier said it is not a photo (see `kind`)"
    )
    kind: ImageKind | None = Field(None, description="the classifier's answer, when it has one")
    caption: str | None = Field(description="null when not captioned")
    tokens: list[str]
    scores: list[float] = Field(description="log-probability of each token")
    log_prob: float | None = Field(
        description="log-probability of the whole caption (with <end>); null when not captioned"
    )
    finished: bool | None = Field(
        description="False when the caption was cut at max_length; null when not captioned"
    )
    grid: tuple[int, int] = Field(
        description="rows and columns of the attention grids ([0, 0] when not captioned)"
    )
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

    caption: str | None
    tokens: list[str]
    scores: list[float]
    attention: list[list[list[float]]] | None = None
    grid: tuple[int, int]
    results: list[ImageCaption]
    settings: dict[str, Any]
    timings: Timings


class ClassifiedImage(BaseModel):
    image: str = Field(description="the upload's file name, as sent (never used on disk)")
    width: int
    height: int
    kind: ImageKind


class ClassifyResponse(BaseModel):
    """Kinds of the uploaded images, in upload order."""

    results: list[ClassifiedImage]
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
    classifier: bool
    catalogue: bool = Field(False, description="GET /v1/search is offered")
    device: str
    threads: int


class SearchHitOut(BaseModel):
    """One file of the catalogue whose caption matches."""

    rank: int = Field(description="1 for the best match")
    score: float = Field(description="bm25 relevance, negated so that higher is better")
    path: str = Field(description="the file, as the pipeline recorded it")
    kind: str | None = Field(description="the classifier's kind (null without a classifier)")
    caption: str
    caption_score: float | None = Field(description="the captioner's confidence")


class SearchResponse(BaseModel):
    query: str
    catalogue: str = Field(description="the database searched")
    hits: list[SearchHitOut]


class ModelResponse(BaseModel):
    backbone: dict[str, Any]
    vocab_size: int
    decoder: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any] | None
    denoiser: bool
    classifier: dict[str, Any] | None = Field(
        None, description="classes, photo class and threshold, weights id, training summary"
    )
    limits: dict[str, Any]


class Sample(BaseModel):
    id: str
    name: str
    url: str
