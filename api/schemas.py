"""Request and response models of the generator service (they are the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

METHOD_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_SEED = 2**32 - 1


class ErrorResponse(BaseModel):
    """Body of every error answer."""

    error: str = Field(description="Machine-readable code, e.g. `size_mismatch`, `queue_full`.")
    detail: str = Field(description="One sentence naming what was wrong.")


class NegativesForm(BaseModel):
    """Form fields of `POST /negatives` besides the two files."""

    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(1, ge=1, le=8, description="Negatives to generate for this pair.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first sample.")
    steps: int = Field(20, ge=1, le=1000, description="Sampler steps (diffusion).")
    strength: float = Field(
        1.0, gt=0.0, le=1.0, allow_inf_nan=False,
        description="Noise strength inside the mask: 1 = fill from pure noise.",
    )
    dilation_px: int = Field(
        2, ge=0, le=64, description="Radius in pixels by which the mask is dilated before filling."
    )
    see_through_px: float = Field(
        0.0, ge=0.0, le=8.0, allow_inf_nan=False,
        description="Projection radiographs only: σ in pixels (at the model's resolution) of the "
                    "input's high-pass the fill keeps inside the mask (the anatomy seen through "
                    "the lesion); 0 = off. 1.25 for the embedded generators on chest X-rays.",
    )
    method: str = Field(
        "diffusion", pattern=METHOD_PATTERN,
        description="Generator method, e.g. `diffusion` or `latent-boundary`.",
    )
    format: Literal["png", "json", "zip"] | None = Field(
        None, description="Response type; overrides the Accept header when given."
    )


def negatives_request_body() -> dict[str, Any]:
    """OpenAPI requestBody of `POST /negatives` (the route parses multipart itself)."""
    schema = NegativesForm.model_json_schema()
    properties = {
        "image": {"type": "string", "format": "binary",
                  "description": "Positive image (PNG/JPEG/TIFF/BMP, gray or RGB)."},
        "mask": {"type": "string", "format": "binary",
                 "description": "Binary tumour mask (0/255 or 0/1), same height and width."},
        **schema["properties"],
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": ["image", "mask"],
                    "additionalProperties": False,
                },
                "encoding": {"image": {"contentType": "image/*, application/octet-stream"},
                             "mask": {"contentType": "image/*, application/octet-stream"}},
            }
        },
    }


class Provenance(BaseModel):
    """What the negatives were computed from."""

    image_sha256: str = Field(description="sha256 of the uploaded image bytes.")
    mask_sha256: str = Field(description="sha256 of the uploaded mask bytes.")
    params: dict[str, Any] = Field(description="Normalised parameters entering the ids.")
    seed: int = Field(description="Request seed; sample k is drawn with seed + k.")
    num_samples: int = Field(description="Samples requested.")
    checkpoint: str = Field(description="Generator checkpoint hash.")
    versions: dict[str, str] = Field(description="Package versions of the server.")


class NegativeInfo(BaseModel):
    """One generated (or stored) negative."""

    id: str = Field(description="Content address (64 hex).")
    url: str = Field(description="Where the PNG is served.")
    meta_url: str = Field(description="Where its metadata is served.")
    sample: int = Field(description="Sample index within the request.")
    seed: int = Field(description="Seed that produced this sample.")
    scores: dict[str, float] = Field(description="Quality scores from the generator; empty from this service (it does not rank samples).")
    cached: bool = Field(description="True when served from the store without generating.")


class NegativesResponse(BaseModel):
    """JSON answer of `POST /negatives`."""

    ids: list[str]
    negatives: list[NegativeInfo]
    provenance: Provenance


class NegativeMeta(BaseModel):
    """Metadata stored with each negative (`GET /negatives/{id}/meta`)."""

    model_config = ConfigDict(extra="allow")

    id: str
    image_sha256: str
    mask_sha256: str
    params: dict[str, Any] = Field(description="Normalised parameters entering the id.")
    seed: int = Field(description="Seed that produced this negative (request seed + sample).")
    method: str
    checkpoint: str
    versions: dict[str, str]
    timings: dict[str, float] = Field(description="queue_ms, generate_ms, batch_size, encode_ms.")
    scores: dict[str, float]
    png_sha256: str
    created: str = Field(description="UTC time of generation, ISO 8601.")


class HealthResponse(BaseModel):
    status: Literal["alive"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    checkpoint: str = Field(description="Generator checkpoint hash; clients key caches with it.")
    device: str
    max_batch: int
