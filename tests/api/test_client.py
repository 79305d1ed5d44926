"""The trainer's client against a scripted transport: retries, Retry-After, limits, errors."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile

import httpx
import numpy as np
import pytest

import shared.negatives_client as nc
from shared.io import encode_png
from shared.negatives_client import NegativesClient, ServiceError, negative_ids, negative_params
from shared.provenance import sha256_bytes

PNG = encode_png(np.full((8, 8), 0.25, np.float32))


def zip_answer(ids=("a" * 64,)) -> httpx.Response:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in ids:
            archive.writestr(f"{i}.png", PNG)
        meta = {"negatives": [{"id": i, "png_sha256": sha256_bytes(PNG)} for i in ids]}
        archive.writestr("metadata.json", json.dumps(meta))
    return httpx.Response(200, content=buf.getvalue(), headers={"content-type": "application/zip"})


def error_answer(status, code="queue_full", retry_after=None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, json={"error": code, "detail": "x"}, headers=headers)


@pytest.fixture
def sleeps(monkeypatch):
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args, **kwargs):
        recorded.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(nc.asyncio, "sleep", fake_sleep)
    return recorded


def run_client(handler, **kwargs):
    async def main():
        transport = httpx.MockTransport(handler)
        async with NegativesClient("http://test", transport=transport, **kwargs) as client:
            return await client.generate(PNG, PNG), client

    return asyncio.run(main())


def test_params_normalisation_makes_int_and_float_strength_equal():
    a = negative_params(steps=20, strength=1, dilation_px=2, method="diffusion")
    b = negative_params(steps=20.0, strength=1.0, dilation_px=2, method="diffusion")
    assert a == b and isinstance(a["strength"], float) and isinstance(a["steps"], int)
    ids = negative_ids(image_sha="i", mask_sha="m", params=a, seed=3, num_samples=2, checkpoint="c")
    assert ids[1] == negative_ids(image_sha="i", mask_sha="m", params=b, seed=4, num_samples=1,
                                  checkpoint="c")[0]
    assert len(set(ids)) == 2
    other = negative_ids(image_sha="i", mask_sha="m", params=a, seed=3, num_samples=1,
                         checkpoint="d")
    assert other[0] != ids[0]


def test_retries_503_honouring_retry_after(sleeps):
    answers = iter([error_answer(503, retry_after="3"), error_answer(504, "timeout"), zip_answer()])
    out, client = run_client(lambda request: next(answers), backoff_s=0.1)
    assert len(out) == 1 and out[0].id == "a" * 64
    assert sleeps[0] == 3.0  # Retry-After honoured
    assert 0.05 <= sleeps[1] <= 0.2  # 504 without Retry-After: backoff 0.1 * 2**1 * U(0.5, 1)
    assert client.retries == 2


def test_retries_connection_errors_then_gives_up(sleeps):
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        run_client(handler, max_retries=3, backoff_s=1.0, max_backoff_s=2.0)
    assert len(calls) == 4
    assert all(d <= 2.0 for d in sleeps) and sleeps[0] <= 1.0  # capped exponential backoff


def test_client_errors_are_not_retried(sleeps):
    calls = []

    def handler(request):
        calls.append(1)
        return error_answer(422, "size_mismatch")

    with pytest.raises(ServiceError) as info:
        run_client(handler)
    assert info.value.status == 422 and info.value.error == "size_mismatch"
    assert len(calls) == 1 and sleeps == []


def test_503_after_all_retries_raises(sleeps):
    with pytest.raises(ServiceError) as info:
        run_client(lambda request: error_answer(503, retry_after="1"), max_retries=2)
    assert info.value.status == 503 and len(sleeps) == 2


def test_concurrency_is_bounded():
    in_flight, peak = 0, 0

    async def handler(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return zip_answer()

    async def main():
        transport = httpx.MockTransport(handler)
        async with NegativesClient("http://test", transport=transport, max_concurrency=3) as c:
            return await c.generate_many([(PNG, PNG)] * 12)

    results = asyncio.run(main())
    assert len(results) == 12 and peak == 3


def test_id_mismatch_with_the_service_is_an_error(tmp_path):
    def handler(request):
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"status": "ready", "checkpoint": "c" * 64})
        return zip_answer(ids=("b" * 64,))  # not the content key of this request

    with pytest.raises(ServiceError) as info:
        run_client(handler, cache_dir=tmp_path)
    assert info.value.error == "id_mismatch"
