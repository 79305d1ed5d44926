"""Async HTTP client the trainer uses to get negatives from the generator service.

It imports no server code. Ids are computed here with :func:`negative_ids`, the same function the
service's store uses, so a sample already in the local cache is never requested again:

>>> async with NegativesClient("http://127.0.0.1:8000", cache_dir="runs/neg_cache") as client:
...     samples = await client.generate(image, mask, num_samples=2, seed=0)

Concurrency is bounded by a semaphore; 503, 504 and connection errors are retried with
exponential backoff (with jitter), and a ``Retry-After`` header is honoured.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.io import decode_image, encode_png, write_bytes_atomic
from shared.provenance import content_key, sha256_bytes

RETRY_STATUSES = (503, 504)


def negative_params(
    *, steps: int, strength: float, dilation_px: int, method: str, see_through_px: float = 0.0
) -> dict[str, Any]:
    """The generation parameters, with the types fixed, as they enter a content key.

    The only normalisation used by the service's store and this client's cache: ints stay ints,
    ``strength`` is always a float (``1`` and ``1.0`` give the same key). ``see_through_px``
    (projection radiographs, ``NegativeGenerator.generate``) enters only when it is on, so keys
    of requests without it are what they were before it existed.
    """
    params = {
        "steps": int(steps),
        "strength": float(strength),
        "dilation_px": int(dilation_px),
        "method": str(method),
    }
    if see_through_px:
        params["see_through_px"] = float(see_through_px)
    return params


def negative_ids(
    *,
    image_sha: str,
    mask_sha: str,
    params: dict[str, Any],
    seed: int,
    num_samples: int,
    checkpoint: str,
) -> list[str]:
    """Content addresses of the ``num_samples`` negatives of one request (sample k -> ids[k]).

    The predictor's contract is that sample k is drawn with seed ``seed + k`` whatever the batch
    and the number of samples, so sample k's id is the key of (inputs, params, ``seed + k``): a
    request for 2 samples from seed 0 and two 1-sample requests with seeds 0 and 1 share ids.
    ``image_sha``/``mask_sha`` are sha256 of the uploaded file bytes; ``params`` go through
    :func:`negative_params` first, so callers may pass them un-normalised.
    """
    norm = negative_params(**params)
    return [
        content_key(
            image_sha=image_sha, mask_sha=mask_sha, params=norm, seed=int(seed) + k,
            checkpoint=checkpoint,
        )
        for k in range(int(num_samples))
    ]


class ServiceError(RuntimeError):
    """The service answered with an error that retrying does not fix (or retries ran out)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status  # HTTP status
        self.error = error  # the body's machine-readable "error" code
        self.detail = detail  # the body's sentence


@dataclass(frozen=True)
class ClientNegative:
    """One negative as the trainer receives it."""

    id: str  # content address (same as the service's)
    image: np.ndarray  # float32 [0, 1], HxW or HxWx3
    png: bytes  # the encoded PNG as stored
    from_cache: bool  # True when read from the local cache without a request


def _as_png(data: bytes | np.ndarray) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return encode_png(np.asarray(data))


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


class NegativesClient:
    """Async client for ``POST /negatives`` with bounded concurrency, retries and a local cache."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 6,
        backoff_s: float = 0.25,
        max_backoff_s: float = 10.0,
        timeout_s: float = 300.0,
        cache_dir: str | Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._checkpoint: str | None = None
        self._rng = random.Random()
        self.requests_sent = 0  # POSTs that reached the wire, retries included
        self.retries = 0  # attempts repeated after 503/504/connection errors

    async def __aenter__(self) -> NegativesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- HTTP with retries ---------------------------------------------------------------------
    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
                delay = None
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                delay = _retry_after_s(response)
            if delay is None:
                base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                delay = base * self._rng.uniform(0.5, 1.0)
            self.retries += 1
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
            error, detail = str(body["error"]), str(body["detail"])
        except (ValueError, KeyError, TypeError):
            error, detail = "http_error", response.text[:200]
        raise ServiceError(response.status_code, error, detail)

    async def checkpoint(self) -> str:
        """The served generator's checkpoint hash (from ``/readyz``; retried until ready)."""
        if self._checkpoint is None:
            response = await self._request("GET", "/readyz")
            self._raise_for(response)
            self._checkpoint = str(response.json()["checkpoint"])
        return self._checkpoint

    # -- cache -----------------------------------------------------------------------------------
    def _cache_path(self, negative_id: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / negative_id[:2] / f"{negative_id}.png"

    def _cache_read(self, negative_id: str) -> ClientNegative | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(negative_id)
        try:
            png = path.read_bytes()
            return ClientNegative(negative_id, decode_image(png, str(path)), png, True)
        except (FileNotFoundError, ValueError):
            return None  # missing or unreadable: fetch again

    def _cache_write(self, negative_id: str, png: bytes) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(negative_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, png)

    # -- public API ------------------------------------------------------------------------------
    async def generate(
        self,
        image: bytes | np.ndarray,
        mask: bytes | np.ndarray,
        *,
        num_samples: int = 1,
        seed: int = 0,
        steps: int = 20,
        strength: float = 1.0,
        dilation_px: int = 2,
        method: str = "diffusion",
        see_through_px: float = 0.0,
    ) -> list[ClientNegative]:
        """Negatives for one image/mask pair (encoded bytes, or arrays encoded as 8-bit PNG)."""
        image_png, mask_png = _as_png(image), _as_png(mask)
        params = negative_params(
            steps=steps, strength=strength, dilation_px=dilation_px, method=method,
            see_through_px=see_through_px,
        )
        async with self._semaphore:
            ids = None
            if self.cache_dir is not None:
                ids = negative_ids(
                    image_sha=sha256_bytes(image_png), mask_sha=sha256_bytes(mask_png),
                    params=params, seed=seed, num_samples=num_samples,
                    checkpoint=await self.checkpoint(),
                )
                cached = [self._cache_read(i) for i in ids]
                if all(c is not None for c in cached):
                    return cached  # type: ignore[return-value]
            fields = {**params, "seed": int(seed), "num_samples": int(num_samples)}
            form = {k: str(v) for k, v in fields.items()}
            files = {
                "image": ("image.png", image_png, "image/png"),
                "mask": ("mask.png", mask_png, "image/png"),
            }
            self.requests_sent += 1
            response = await self._request(
                "POST", "/negatives", data=form, files=files,
                headers={"Accept": "application/zip"},
            )
        self._raise_for(response)
        return self._unpack_zip(response.content, expected_ids=ids)

    async def generate_many(
        self, pairs: Sequence[tuple[bytes | np.ndarray, bytes | np.ndarray]], **params: Any
    ) -> list[list[ClientNegative]]:
        """``generate`` for many pairs concurrently (bounded by ``max_concurrency``), in order."""
        return list(await asyncio.gather(*(self.generate(i, m, **params) for i, m in pairs)))

    def _unpack_zip(self, content: bytes, *, expected_ids: list[str] | None) -> list[ClientNegative]:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            meta = json.loads(archive.read("metadata.json"))
            ids = [entry["id"] for entry in meta["negatives"]]
            if expected_ids is not None and ids != expected_ids:
                raise ServiceError(
                    200, "id_mismatch",
                    "the service's ids differ from the client's content keys; "
                    "shared.negatives_client.negative_params changed on one side",
                )
            out = []
            for negative_id in ids:
                png = archive.read(f"{negative_id}.png")
                if sha256_bytes(png) != meta_sha(meta, negative_id):
                    raise ServiceError(200, "corrupt_response", f"{negative_id}.png fails its sha256")
                self._cache_write(negative_id, png)
                out.append(ClientNegative(negative_id, decode_image(png, negative_id), png, False))
        return out


def meta_sha(meta: dict[str, Any], negative_id: str) -> str:
    """The ``png_sha256`` recorded for ``negative_id`` in a zip's metadata.json."""
    for entry in meta["negatives"]:
        if entry["id"] == negative_id:
            return str(entry["png_sha256"])
    raise KeyError(negative_id)
