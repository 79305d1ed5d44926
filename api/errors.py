"""Every error the service answers, as ``{"error": "<code>", "detail": "<sentence>"}``."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import io as sio

logger = logging.getLogger(__name__)

# status -> (codes, when) : documented in OpenAPI for every route that can answer them
ERROR_DOCS: dict[int, str] = {
    400: "malformed_request: the multipart body could not be parsed.",
    401: "unauthorized: an API key is configured and the request has no valid bearer token.",
    404: "not_found: no stored negative has this id (never generated, evicted or corrupt).",
    406: "not_acceptable: Accept names no media type this endpoint produces.",
    413: "payload_too_large (body or file over the upload limit) or image_too_large (pixels).",
    415: "unsupported_media_type: the body is not multipart/form-data or a file is not an image.",
    422: (
        "invalid_field, missing_field, invalid_id, unreadable_image, non_finite_image, "
        "size_mismatch, empty_mask, non_binary_mask, no_context, over_budget: the input is wrong or asks "
        "for more work than one request may; the detail names the field or file."
    ),
    500: "internal_error: a bug; the detail says nothing more.",
    503: "queue_full or not_ready: retry after the Retry-After header's seconds.",
    504: "timeout: the negatives were not ready within the request timeout; the work is dropped.",
}


class ApiError(Exception):
    """An error answered as JSON with a status, a code and a sentence."""

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def from_input_error(exc: sio.InputError) -> ApiError:
    """Map a shared.io input error to its answer (413 for too many pixels, else 422)."""
    code = _snake(type(exc).__name__).removesuffix("_error")  # SizeMismatchError -> size_mismatch
    if isinstance(exc, sio.ImageTooLargeError):
        return ApiError(413, "image_too_large", f"{exc} (the service's NEG_API_MAX_PIXELS)")
    if type(exc) is sio.InputError:
        code = "invalid_input"
    return ApiError(422, code, str(exc))


def error_body(status: int, error: str, detail: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def install_handlers(app: FastAPI, on_error) -> None:
    """Register handlers so that every error, ours or the framework's, has the JSON body.

    ``on_error(status, code)`` is called once per error answer (metrics).
    """

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        on_error(exc.status, exc.error)
        return error_body(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path"))
        code = "invalid_id" if "path" in first.get("loc", ()) else "invalid_field"
        on_error(422, code)
        return error_body(422, code, f"{where or 'request'}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "malformed_request"}
        code = codes.get(exc.status_code, "http_error")
        on_error(exc.status_code, code)
        return error_body(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        on_error(500, "internal_error")
        return error_body(500, "internal_error", "the server failed; see its log")
