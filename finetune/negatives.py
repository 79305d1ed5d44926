"""Negatives for the positives of a run, fetched once before training and cached.

Sources (``negatives.source``):

- ``service``: the generator service over HTTP through :class:`shared.negatives_client.NegativesClient`
  (bounded concurrency, retries, content-addressed local cache). URL from ``negatives.url`` or the
  env ``NEGATIVES_URL``; with neither, the in-process generator is used. The service is checked
  (``/readyz``) before anything else, so an unreachable one fails before training starts.
- ``inprocess``: ``generator.build.load_generator`` and its predictor, same cache layout and keys
  (``shared.negatives_client.negative_ids``): a negative made in-process with the served
  checkpoint is a cache hit for the HTTP path and vice versa.
- ``normal``: a real lesion-free image of the same domain (deterministic choice per seed).
- ``gt``: the benchmark's exact ground-truth negative (an oracle, for ablations).
- ``dpo_csv``: the ``filename_neg`` column of the researcher's DPO CSV.

Every source returns ``{sample id: float32 HxW image}`` for the lesion-bearing samples.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from finetune.config import TrainConfig
from finetune.data import Sample, TrainDataError, load_samples
from shared.io import InputError, decode_image, encode_png, read_image, write_bytes_atomic
from shared.negatives_client import NegativesClient, ServiceError, negative_ids, negative_params
from shared.provenance import sha256_bytes

URL_ENV = "NEGATIVES_URL"
API_KEY_ENV = "NEGATIVES_API_KEY"


class NegativesUnavailableError(InputError, RuntimeError):
    """Negatives cannot be obtained (service unreachable or refusing, missing files); raised
    before training. A user error (``shared.cli`` prints it as one line); still a RuntimeError
    for callers that catch it as one."""


def _gray(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=-1) if image.ndim == 3 else image


def _params(cfg: TrainConfig) -> dict:
    n = cfg.negatives
    return negative_params(steps=n.steps, strength=n.strength, dilation_px=n.dilation_px,
                           method=n.method, see_through_px=n.see_through_px)


def service_url(cfg: TrainConfig) -> str:
    """The configured service URL, else ``$NEGATIVES_URL``, else '' (in-process)."""
    return cfg.negatives.url or os.environ.get(URL_ENV, "")


# ----------------------------------------------------------------------------- service


async def _fetch_service(cfg: TrainConfig, url: str, positives: Sequence[Sample]) -> tuple[dict, int]:
    n = cfg.negatives
    client = NegativesClient(
        url, api_key=n.api_key or os.environ.get(API_KEY_ENV) or None,
        max_concurrency=n.max_concurrency, max_retries=n.max_retries, timeout_s=n.timeout_s,
        cache_dir=n.cache_dir,
    )
    async with client:
        probe = NegativesClient(url, max_retries=2, backoff_s=0.2, timeout_s=10.0)
        async with probe:
            try:
                checkpoint = await probe.checkpoint()
            except (httpx.HTTPError, ServiceError, KeyError, ValueError) as err:
                raise NegativesUnavailableError(
                    f"generator service at {url} is not usable ({type(err).__name__}: {err}); "
                    f"start it (python -m api) or unset negatives.url / ${URL_ENV} to generate "
                    "in-process"
                ) from err
        client._checkpoint = checkpoint  # the readiness probe's answer; no second /readyz
        pairs = [(encode_png(s.image), encode_png(s.mask)) for s in positives]
        try:
            results = await client.generate_many(
                pairs, num_samples=1, seed=n.seed, **_params(cfg)
            )
        except ServiceError as err:  # e.g. 422 no_context for a lesion covering its image
            raise NegativesUnavailableError(
                f"generator service at {url} refused a training positive ({err})") from err
        except httpx.HTTPError as err:  # the service went away mid-run (retries spent)
            raise NegativesUnavailableError(
                f"generator service at {url} stopped answering after {client.requests_sent} "
                f"request(s) ({type(err).__name__}: {err}); the negatives received are cached "
                "(negatives.cache_dir): restart the service and rerun to go on") from err
        sent = client.requests_sent
    return {s.id: _gray(r[0].image) for s, r in zip(positives, results, strict=True)}, sent


def fetch_from_service(cfg: TrainConfig, url: str, positives: Sequence[Sample]) -> tuple[dict, int]:
    """Negatives over HTTP; returns (negatives by id, number of POST /negatives sent)."""
    return asyncio.run(_fetch_service(cfg, url, positives))


# ----------------------------------------------------------------------------- in-process


def _cache_path(cache_dir: Path, negative_id: str) -> Path:
    # The same layout as shared.negatives_client's cache.
    return cache_dir / negative_id[:2] / f"{negative_id}.png"


BIHARMONIC = "biharmonic"


def load_in_process_generator(name: str, method: str):
    """``load_generator(name or None)``; ``name == "biharmonic"`` is the predictor without a learned
    backend (scikit-image biharmonic inpainting through the same contract; method must match)."""
    from generator.predictor import NegativeGenerator

    if name == BIHARMONIC:
        if method != BIHARMONIC:
            raise NegativesUnavailableError(
                f"negatives.generator=biharmonic needs negatives.method=biharmonic, got {method!r}")
        return NegativeGenerator(None, checkpoint_hash=sha256_bytes(b"biharmonic-inpainting"))
    from generator.build import load_generator

    try:
        return load_generator(name or None)
    except (OSError, ValueError) as err:
        raise NegativesUnavailableError(
            f"cannot load the generator {name or '(embedded default)'}: {err}") from err


def fetch_in_process(cfg: TrainConfig, positives: Sequence[Sample], generator=None) -> tuple[dict, int]:
    """Negatives from the generator's predictor in this process, through the same cache.

    Returns (negatives by id, number of images generated). ``generator``: an already loaded
    ``NegativeGenerator`` (else ``load_generator(negatives.generator or None)``).
    """
    n = cfg.negatives
    if generator is None:
        generator = load_in_process_generator(n.generator, n.method)
    cache = Path(n.cache_dir)
    params = _params(cfg)
    out, todo = {}, []
    for s in positives:
        image_png, mask_png = encode_png(s.image), encode_png(s.mask)
        (nid,) = negative_ids(image_sha=sha256_bytes(image_png), mask_sha=sha256_bytes(mask_png),
                              params=params, seed=n.seed, num_samples=1,
                              checkpoint=generator.checkpoint_hash)
        path = _cache_path(cache, nid)
        if path.is_file():
            out[s.id] = _gray(decode_image(path.read_bytes(), str(path)))
        else:
            # the 8-bit image the service would have received, so both paths agree
            todo.append((s, nid, decode_image(image_png), s.mask))
    batch = 8
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        results = generator.generate([c[2] for c in chunk], [c[3] for c in chunk], num_samples=1,
                                     seed=n.seed, **params)
        for (s, nid, _, _), res in zip(chunk, results, strict=True):
            png = encode_png(res[0].image)
            path = _cache_path(cache, nid)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, png)  # a temp of its own: runs sharing the cache never collide
            out[s.id] = _gray(decode_image(png, str(path)))
    return out, len(todo)


# ----------------------------------------------------------------------------- real images


def normal_negatives(cfg: TrainConfig, positives: Sequence[Sample]) -> dict:
    """For each positive, a real lesion-free training image of the same domain (seeded choice)."""
    normals = defaultdict(list)
    for s in load_samples(replace(cfg.data, include_normals=True, max_items=0)):
        if not s.is_tumor:
            normals[s.domain].append(s)
    missing = sorted({p.domain for p in positives} - set(normals))
    if missing:
        raise NegativesUnavailableError(f"no lesion-free training images in domain(s) {missing}")
    rng = np.random.default_rng(cfg.negatives.seed)
    return {p.id: normals[p.domain][int(rng.integers(len(normals[p.domain])))].image
            for p in positives}


def _file_negatives(positives: Sequence[Sample], attr: str, what: str) -> dict:
    out = {}
    for s in positives:
        path = getattr(s, attr)
        if path is None or not Path(path).is_file():
            raise TrainDataError(f"{s.id}: no {what} negative file ({path})")  # the user's data
        out[s.id] = _gray(read_image(path))
    return out


def resolve_negatives(cfg: TrainConfig, samples: Sequence[Sample], *, generator=None) -> dict:
    """``{sample id: negative image}`` for the lesion-bearing ``samples`` from the configured source."""
    positives = [s for s in samples if s.is_tumor]
    source = cfg.negatives.source
    if source == "none":
        return {}
    if source == "gt":
        return _file_negatives(positives, "gt_negative", "ground-truth")
    if source == "dpo_csv":
        return _file_negatives(positives, "csv_negative", "DPO CSV")
    if source == "normal":
        return normal_negatives(cfg, positives)
    url = service_url(cfg) if source == "service" else ""
    if url:
        return fetch_from_service(cfg, url, positives)[0]
    return fetch_in_process(cfg, positives, generator)[0]
