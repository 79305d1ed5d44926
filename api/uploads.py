"""Parsing and checking the multipart upload of `POST /negatives`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from api.errors import ApiError, from_input_error
from api.schemas import NegativesForm
from api.settings import Settings
from shared import io as sio
from shared.provenance import sha256_bytes

ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ParsedUpload:
    """A checked request: decoded arrays, their file hashes and the form fields."""

    image: np.ndarray  # float32 [0,1], HxW or HxWx3
    mask: np.ndarray  # bool HxW with at least one lesion pixel
    image_sha: str  # sha256 of the uploaded image bytes
    mask_sha: str  # sha256 of the uploaded mask bytes
    form: NegativesForm


def _check_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type",
            f"body must be multipart/form-data with files image and mask, got {content_type!r:.60}",
        )


def _check_length(request: Request, settings: Settings) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_upload_bytes:
        raise ApiError(
            413, "payload_too_large",
            f"body is {length} bytes; the limit is {settings.max_upload_bytes}",
        )


def _byte_limited(request: Request, limit: int) -> Request:
    """``request`` whose body stream stops with 413 as soon as more than ``limit`` bytes arrived.

    The Content-Length check cannot see a chunked body; counting what arrives does, before the
    multipart parser spools more than ``limit`` bytes to disk.
    """
    received = 0
    receive = request.receive

    async def counted():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ApiError(413, "payload_too_large",
                               f"body exceeds the limit of {limit} bytes; stopped reading it")
        return message

    return Request(request.scope, counted)


async def _file_bytes(form, field: str, settings: Settings) -> bytes:
    part = form.get(field)
    if part is None:
        raise ApiError(422, "missing_field", f"{field}: file is required")
    if not isinstance(part, UploadFile):
        raise ApiError(422, "invalid_field", f"{field}: must be a file upload, not a text field")
    part_type = (part.content_type or "application/octet-stream").lower()
    if not part_type.startswith(ACCEPTED_PART_TYPES):
        raise ApiError(
            415, "unsupported_media_type", f"{field}: content type {part_type!r:.60} is not an image"
        )
    if part.size is not None and part.size > settings.max_upload_bytes:
        raise ApiError(
            413, "payload_too_large",
            f"{field} is {part.size} bytes; the limit is {settings.max_upload_bytes}",
        )
    return await part.read()


def _parse_form(form) -> NegativesForm:
    fields = {}
    for key, value in form.multi_items():
        if key in ("image", "mask"):
            continue
        if isinstance(value, UploadFile):
            raise ApiError(422, "invalid_field", f"{key}: must be a text field, not a file")
        if key in fields:
            raise ApiError(422, "invalid_field", f"{key}: given more than once")
        fields[key] = value
    try:
        return NegativesForm.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "form"
        raise ApiError(422, "invalid_field", f"{where}: {err['msg']}") from None


def _decode(image_bytes: bytes, mask_bytes: bytes, settings: Settings):
    image = sio.decode_image(image_bytes, "image", max_pixels=settings.max_pixels)
    mask = sio.decode_mask(mask_bytes, "mask", require_lesion=True, max_pixels=settings.max_pixels)
    sio.check_pair(image, mask, "image/mask")
    return image, mask, sha256_bytes(image_bytes), sha256_bytes(mask_bytes)


async def parse_upload(request: Request, settings: Settings) -> ParsedUpload:
    """Check media type and sizes, decode both files, validate fields; raise ApiError if bad."""
    _check_media_type(request)
    _check_length(request, settings)
    request = _byte_limited(request, settings.max_upload_bytes)
    try:
        form = await request.form(max_files=2, max_fields=16)
    except MultiPartException as exc:
        raise ApiError(400, "malformed_request", f"multipart body: {exc.message}") from None
    try:
        params = _parse_form(form)
        image_bytes = await _file_bytes(form, "image", settings)
        mask_bytes = await _file_bytes(form, "mask", settings)
        if len(image_bytes) + len(mask_bytes) > settings.max_upload_bytes:
            raise ApiError(
                413, "payload_too_large",
                f"files total {len(image_bytes) + len(mask_bytes)} bytes; "
                f"the limit is {settings.max_upload_bytes}",
            )
        try:  # decoding in a thread: the event loop keeps answering (health probes) meanwhile
            image, mask, image_sha, mask_sha = await asyncio.to_thread(
                _decode, image_bytes, mask_bytes, settings)
        except sio.InputError as exc:
            raise from_input_error(exc) from None
    finally:
        await form.close()
    return ParsedUpload(image, mask, image_sha, mask_sha, params)
