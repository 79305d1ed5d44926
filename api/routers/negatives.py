"""`/negatives`: generate tumour-removed negatives, and read them back by id."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam

from api.batching import QueueFullError
from api.deps import ReadyStateDep, StateDep, require_api_key
from api.errors import ERROR_DOCS, ApiError
from api.responses import MEDIA_TYPES, choose_format, render
from api.schemas import (
    ErrorResponse,
    NegativeMeta,
    NegativesResponse,
    Provenance,
    negatives_request_body,
)
from api.service import PendingNegatives, ServiceState
from api.store import ID_PATTERN
from api.uploads import parse_upload
from shared.negatives_client import negative_params

router = APIRouter(prefix="/negatives", tags=["negatives"], dependencies=[Depends(require_api_key)])


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse, "description": ERROR_DOCS[s]} for s in statuses}


IdParam = PathParam(pattern=ID_PATTERN, description="Content address: 64 lowercase hex.")


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def check_budget(upload, settings) -> None:
    """422 ``over_budget`` when the request asks for more work than one request may
    (``max_fill_pixels``, ``max_sample_steps``; the detail names the limit and the setting), 422
    ``no_context`` when the dilated mask leaves no tissue to fill from — before any work."""
    from generator.masks import dilate

    form = upload.form
    steps = form.num_samples * form.steps
    if steps > settings.max_sample_steps:
        raise ApiError(422, "over_budget",
                       f"num_samples x steps = {steps} exceeds the limit of "
                       f"{settings.max_sample_steps} (NEG_API_MAX_SAMPLE_STEPS)")
    fill = int((await asyncio.to_thread(dilate, upload.mask, form.dilation_px)).sum())
    if fill == upload.mask.size:
        from generator.predictor import no_context_message

        raise ApiError(422, "no_context", no_context_message(form.dilation_px))
    if fill * form.num_samples > settings.max_fill_pixels:
        raise ApiError(422, "over_budget",
                       f"{fill} pixels to fill (mask dilated by {form.dilation_px} px) x "
                       f"{form.num_samples} sample(s) exceeds the limit of "
                       f"{settings.max_fill_pixels} (NEG_API_MAX_FILL_PIXELS)")


async def _finish_or_cancel(request: Request, state: ServiceState, pending: PendingNegatives):
    """Wait for ``pending`` until done, the client disconnects (cancel) or the timeout (504)."""
    work = asyncio.ensure_future(pending.finish())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {work, watcher}, timeout=state.settings.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watcher.cancel()
    if work in done:
        return work.result()
    pending.future.cancel()  # the batcher skips it if it has not started
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    if watcher in done:
        state.metrics.cancelled.inc()
        raise ApiError(499, "client_closed", "the client disconnected")  # nobody reads this
    raise ApiError(
        504, "timeout", f"negatives not ready within {state.settings.request_timeout_s:g} s"
    )


@router.post(
    "",
    summary="Generate negatives for an image and its tumour mask",
    openapi_extra={"requestBody": negatives_request_body()},
    response_model=NegativesResponse,
    responses={
        200: {
            "description": (
                "The negatives. `application/json`: ids, scores, provenance, URLs. `image/png`: "
                "the first sample, with X-Negative-Id, X-Negative-Seed and X-Negative-Scores "
                "headers. `application/zip`: every sample as `<id>.png` plus `metadata.json`."
            ),
            "content": {"image/png": {}, "application/zip": {}},
            "headers": {
                "X-Negative-Ids": {"description": "Comma-separated ids", "schema": {"type": "string"}},
                "X-Cache": {"description": "hit when served from the store", "schema": {"type": "string"}},
            },
        },
        **_errors(400, 401, 406, 413, 415, 422, 503, 504),
    },
)
async def create_negatives(request: Request, state: ReadyStateDep) -> Response:
    assert state.batcher is not None
    with state.batcher.arriving():  # lets the batcher wait for this request (batching.py)
        upload = await parse_upload(request, state.settings)
        await check_budget(upload, state.settings)
        fmt = choose_format(request.headers.get("accept"), upload.form.format)
        form = upload.form
        params = negative_params(
            steps=form.steps, strength=form.strength, dilation_px=form.dilation_px,
            method=form.method, see_through_px=form.see_through_px,
        )
        ids = state.ids_for(
            image_sha=upload.image_sha, mask_sha=upload.mask_sha, params=params, seed=form.seed,
            num_samples=form.num_samples,
        )
        served = await asyncio.to_thread(state.lookup, ids)  # file reads off the event loop
        pending = None
        if served is None:
            try:  # queued before leaving arriving(): the batcher never sees a gap
                pending = state.enqueue(
                    upload.image, upload.mask, image_sha=upload.image_sha,
                    mask_sha=upload.mask_sha, params=params, seed=form.seed, ids=ids,
                )
            except QueueFullError as exc:
                raise ApiError(
                    503, "queue_full", f"{exc}; retry later",
                    headers={"Retry-After": str(state.settings.retry_after_s)},
                ) from None
    if pending is None:
        state.metrics.store_hits.inc()
    else:
        try:
            served = await _finish_or_cancel(request, state, pending)
        except ValueError as exc:  # the generator refuses the parameters (e.g. unknown method)
            raise ApiError(422, "invalid_field", str(exc)) from None
    provenance = Provenance(
        image_sha256=upload.image_sha, mask_sha256=upload.mask_sha,
        params=served[0].meta["params"], seed=form.seed, num_samples=form.num_samples,
        checkpoint=state.checkpoint,
        versions=state.versions,
    )
    return render(request, fmt, served, provenance)


@router.get(
    "/{negative_id}",
    name="get_negative",
    summary="A stored negative as PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG."},
               **_errors(401, 404, 422)},
)
async def get_negative(state: StateDep, negative_id: str = IdParam) -> Response:
    entry = state.store.get(negative_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no stored negative {negative_id}")
    return Response(entry.png, media_type=MEDIA_TYPES["png"], headers={"X-Negative-Id": entry.id})


@router.get(
    "/{negative_id}/meta",
    name="get_negative_meta",
    summary="Metadata of a stored negative",
    response_model=NegativeMeta,
    responses=_errors(401, 404, 422),
)
async def get_negative_meta(state: StateDep, negative_id: str = IdParam) -> dict:
    entry = state.store.get(negative_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no stored negative {negative_id}")
    return entry.meta
