"""Service settings, read from the environment (prefix ``NEG_API_``) by pydantic-settings.

Example: ``NEG_API_DEVICE=cuda NEG_API_MAX_BATCH=16 python -m api``.

:func:`settings_from_env` is what ``python -m api`` reads them with: a ``NEG_API_*`` variable
that names no setting, or a value that does not validate, is a :class:`SettingsError` naming the
variable (one ``error:`` line, exit status 2, through ``shared.cli.run``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import ConfigError

ENV_PREFIX = "NEG_API_"


class SettingsError(ConfigError):
    """A ``NEG_API_*`` environment variable that is unknown or holds a bad value (a user's
    mistake: the message names the variable)."""


class Settings(BaseSettings):
    """Everything the generator service can be told at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Generator checkpoint: a directory or registry name for generator.build.load_generator;
    # None serves the embedded default committed with the repo.
    generator: str | None = None
    # Optional diffusers LoRA directory applied on top of an sd-inpaint `generator` (the output of
    # `generator/train.py` / `generator/dpo.py` with model.backend sd-inpaint); None = the base
    # alone. The checkpoint hash (negative ids, provenance) covers base and LoRA.
    generator_lora: str | None = None
    # Pixel generator only: True = the learned model adds only texture matched to the tissue ring
    # around the hole on the classical coarse fill (NegativeGenerator.texture_match); False = its
    # full residual; None = as the checkpoint says (on for the embedded default since session 20,
    # bench/results/generator_kriging_rule.md). Changes the checkpoint hash.
    texture_match: bool | None = None
    # Pixel generator only: the classical fill its native compositions build on — "biharmonic"
    # or "kriging" (per image, linear-variogram kriging or biharmonic, whichever predicts a hidden
    # ring of tissue better: generator.kriging) or "stacked" (their convex combination fitted on
    # that ring: generator.kriging.stacked_fill); None = as the checkpoint says. Changes the hash.
    coarse_prior: Literal["biharmonic", "kriging", "stacked"] | None = None
    # torch device the generator runs on ("cpu", "cuda", "cuda:1"); one batching worker per device.
    device: str = "cpu"
    # Rows (image x sample) per backend call inside the predictor; None = max_batch. The
    # predictor's own default is 1 row, which would undo the service's batching.
    predictor_batch_rows: int | None = Field(default=None, ge=1)
    # Content-addressed store of generated negatives (PNG + metadata JSON per id).
    store_dir: Path = Path("runs/negatives_store")
    # Size cap of the store in bytes; least recently used entries are evicted beyond it.
    store_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Largest number of images one predictor call receives (one image = num_samples negatives).
    max_batch: int = Field(default=8, ge=1)
    # How long the worker waits for more compatible requests before running a partial batch.
    max_wait_ms: float = Field(default=10.0, ge=0)
    # Requests waiting for the worker beyond this number are refused with 503 + Retry-After.
    queue_size: int = Field(default=64, ge=1)
    # Retry-After (seconds) sent with 503 answers.
    retry_after_s: int = Field(default=1, ge=1)
    # A request waiting longer than this for its negatives gets 504 (its queued work is cancelled).
    request_timeout_s: float = Field(default=120.0, gt=0)
    # Largest accepted multipart body / single uploaded file, in bytes (413 beyond).
    max_upload_bytes: int = Field(default=16 * 1024**2, gt=0)
    # Largest accepted image in pixels, height x width (413 beyond).
    max_pixels: int = Field(default=1024 * 1024, gt=0)
    # Work budget of one request (422 over_budget beyond): pixels to fill — the mask dilated by
    # dilation_px — times num_samples, and sampler steps times num_samples. A 1000² image with a
    # 200² mask at dilation 64 held the single worker 13.8 s before the budget existed.
    max_fill_pixels: int = Field(default=512 * 512, gt=0)
    max_sample_steps: int = Field(default=400, gt=0)
    # Optional bearer token; when set every endpoint except /healthz, /readyz, /metrics needs it.
    api_key: SecretStr | None = None
    # With an api_key: also require it for /docs, /redoc and /openapi.json (the API's description).
    protect_docs: bool = False
    # Address `python -m api` binds; keep 127.0.0.1 unless a container maps the port.
    host: str = "127.0.0.1"
    # Port `python -m api` listens on.
    port: int = Field(default=8000, ge=0, le=65535)
    # Log one line per request (uvicorn's access log) when serving with `python -m api`.
    access_log: bool = True
    # Torch intra-op threads for the worker (None leaves torch's default).
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("api_key", "generator", "generator_lora", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """An empty env value (``NEG_API_API_KEY=``) means unset, not an empty key."""
        return None if isinstance(value, str) and not value.strip() else value


SECRET_SETTINGS = frozenset({"api_key"})  # never echoed in an error message


def env_var(field: str) -> str:
    """The environment variable of a setting: ``max_batch`` -> ``NEG_API_MAX_BATCH``."""
    return f"{ENV_PREFIX}{field.upper()}"


def check_env_names(environ: Mapping[str, str] | None = None) -> None:
    """SettingsError for the first ``NEG_API_*`` variable that names no setting (pydantic-settings
    ignores those silently: a misspelt ``NEG_API_MAX_BATCHES`` would leave the default)."""
    environ = os.environ if environ is None else environ
    valid = {env_var(name) for name in Settings.model_fields}
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads the variables case-insensitively
        if upper.startswith(ENV_PREFIX) and upper not in valid:
            close = difflib.get_close_matches(upper, sorted(valid), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise SettingsError(f"{name}: no such setting; {hint}valid: {', '.join(sorted(valid))}")


def _describe(error: dict) -> str:
    field = str(error["loc"][0]) if error.get("loc") else "?"
    shown = "" if field in SECRET_SETTINGS else f" (got {error.get('input')!r})"
    return f"{env_var(field)}: {error.get('msg', 'invalid value')}{shown}"


def settings_from_env() -> Settings:
    """Settings from the environment (``NEG_API_*``), every variable checked: SettingsError with
    one line naming each bad variable instead of pydantic's multi-line ValidationError."""
    check_env_names()
    try:
        return Settings()
    except ValidationError as err:
        raise SettingsError("; ".join(_describe(e) for e in err.errors())) from None
