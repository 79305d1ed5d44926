"""The service's state: generator, batcher and store, and the fetch-or-generate logic."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from api.batching import MicroBatcher
from api.metrics import ServiceMetrics
from api.settings import Settings, SettingsError
from api.store import NegativeStore
from shared.config import missing_path
from shared.io import encode_png
from shared.negatives_client import negative_ids, negative_params

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("numpy", "torch", "diffusers", "fastapi", "pillow")


def package_versions() -> dict[str, str]:
    """Versions recorded in every negative's metadata."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def build_generator(settings: Settings) -> Any:
    """Load the generator named by the settings (override this dependency in tests)."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from generator.build import load_generator

    rows = settings.predictor_batch_rows or settings.max_batch
    return load_generator(settings.generator, device=settings.device, batch_size=rows,
                          lora=settings.generator_lora, texture_match=settings.texture_match,
                          coarse_prior=settings.coarse_prior)


# The checkpoint layouts generator.build.load_generator tells apart (its names, repeated here so
# that the start-up check imports neither torch nor diffusers).
DEFAULT_GENERATOR = Path(__file__).resolve().parents[1] / "generator" / "weights" / "pixel_reference"
PIXEL_CONFIG = "generator_config.json"  # generator.build.CONFIG_NAME
PIPELINE_INDEX = "model_index.json"  # a diffusers pipeline (sd-inpaint)
LORA_META = "generator_lora.json"  # a LoRA dir naming its base
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def check_startup(settings: Settings) -> None:
    """What ``python -m api`` checks before it serves: the generator loads in the background
    (``/readyz`` 503 until then), so a setting it could never load with would otherwise show only
    as a 503 per request. Cheap (file checks, the local HF cache, ``torch.device``); SettingsError
    naming the ``NEG_API_*`` variable. Mirrors ``generator.build.load_generator``'s rules."""
    from shared.cli import check_torch_device
    from shared.config import ConfigError

    try:
        check_torch_device(settings.device, "NEG_API_DEVICE")
    except ConfigError as err:
        raise SettingsError(str(err)) from None
    _check_store_dir(Path(settings.store_dir))
    kind = _generator_kind(settings.generator, lora_given=settings.generator_lora is not None)
    if settings.generator_lora is not None:
        if kind != "sd-inpaint":
            what = settings.generator or "the embedded default"
            raise SettingsError(
                f"NEG_API_GENERATOR_LORA={settings.generator_lora}: a LoRA applies to an sd-inpaint "
                f"NEG_API_GENERATOR (a diffusers pipeline dir or cached hub id); {what} is a "
                f"{'pixel checkpoint' if kind == 'pixel' else 'LoRA dir itself'}")
        _check_lora_dir(Path(settings.generator_lora), "NEG_API_GENERATOR_LORA")
    if settings.texture_match and kind != "pixel":
        raise SettingsError(f"NEG_API_TEXTURE_MATCH=true: texture matching applies to pixel "
                            f"checkpoints only; NEG_API_GENERATOR={settings.generator} is {kind}")
    if settings.coarse_prior not in (None, "biharmonic") and kind != "pixel":
        raise SettingsError(f"NEG_API_COARSE_PRIOR={settings.coarse_prior}: the coarse prior applies "
                            f"to pixel checkpoints only; NEG_API_GENERATOR={settings.generator} is {kind}")


def _check_store_dir(path: Path) -> None:
    """The store's folder is a writable directory or can be created (nothing is created here)."""
    for at in (path, *path.absolute().parents):
        if at.exists():
            if not at.is_dir():
                where = "exists and is not a directory" if at == path else f"{at} is a file"
                raise SettingsError(f"NEG_API_STORE_DIR={path}: {where}")
            if not os.access(at, os.W_OK | os.X_OK):
                raise SettingsError(f"NEG_API_STORE_DIR={path}: {at} is not writable")
            return


def _check_lora_dir(path: Path, var: str) -> None:
    if not (path / LORA_WEIGHTS).is_file():
        raise SettingsError(f"{var}={path}: not a diffusers LoRA dir (no {LORA_WEIGHTS})")


def _generator_kind(name: str | None, *, lora_given: bool, var: str = "NEG_API_GENERATOR") -> str:
    """``pixel``, ``sd-inpaint`` or ``lora-dir`` (a LoRA dir naming its sd-inpaint base), as
    load_generator would load ``name``; SettingsError where it would fail."""
    if name is None or name == "pixel":
        if not (DEFAULT_GENERATOR / PIXEL_CONFIG).is_file():
            raise SettingsError(f"{var} unset: the embedded default generator {DEFAULT_GENERATOR} "
                                "is missing; name a checkpoint")
        return "pixel"
    path = Path(name)
    if path.is_dir():
        if (path / PIXEL_CONFIG).is_file():
            return "pixel"
        if (path / LORA_META).is_file() and not lora_given:
            try:
                base = json.loads((path / LORA_META).read_text()).get("base")
            except (OSError, ValueError, AttributeError) as err:
                raise SettingsError(f"{var}={name}: {LORA_META} is not a JSON object ({err})") from None
            if not base:
                raise SettingsError(f"{var}={name}: {LORA_META} names no base pipeline; pass the "
                                    "base as NEG_API_GENERATOR and this dir as NEG_API_GENERATOR_LORA")
            _check_lora_dir(path, var)
            if _generator_kind(str(base), lora_given=True, var=f"{var}={name}: its base") != "sd-inpaint":
                raise SettingsError(f"{var}={name}: its base {base} is not an sd-inpaint pipeline")
            return "lora-dir"
        if (path / PIPELINE_INDEX).is_file():
            return "sd-inpaint"
        raise SettingsError(f"{var}={name}: neither a pixel checkpoint ({PIXEL_CONFIG}) nor a "
                            f"diffusers pipeline ({PIPELINE_INDEX})")
    if path.exists():
        raise SettingsError(f"{var}={name}: not a checkpoint folder")
    if missing_path(name):  # generator.build.load_generator's rule
        raise SettingsError(f"{var}={name}: no such checkpoint folder (a hub id reads org/name)")
    from huggingface_hub import snapshot_download

    try:  # load_generator reads hub ids from the local cache only
        snapshot_download(name, local_files_only=True)
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError
        raise SettingsError(f"{var}={name}: no such checkpoint folder, and no hub model of that id "
                            f"in the local Hugging Face cache (never downloaded at run time; "
                            f"{type(err).__name__})") from None
    return "sd-inpaint"


@dataclass(frozen=True)
class Served:
    """One negative as answered: its PNG and stored metadata."""

    id: str
    png: bytes
    meta: dict[str, Any]
    cached: bool


class ServiceState:
    """Holds what the lifespan creates; routes reach it through ``app.state.service``."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = NegativeStore(settings.store_dir, max_bytes=settings.store_max_bytes)
        self.versions = package_versions()
        self.generator: Any = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self._load_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    @property
    def checkpoint(self) -> str:
        return str(self.generator.checkpoint_hash)

    def start_loading(self, build: Callable[[Settings], Any]) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load(build))

    async def _load(self, build: Callable[[Settings], Any]) -> None:
        start = time.perf_counter()
        try:
            generator = await asyncio.to_thread(build, self.settings)
        except Exception as exc:
            logger.exception("generator failed to load")
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.generator = generator
        batcher = MicroBatcher(
            lambda images, masks, kwargs: generator.generate(images, masks, **kwargs),
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1e3,
            queue_size=self.settings.queue_size,
            on_batch=self.metrics.batch_size.observe,
            on_cancelled=lambda n: self.metrics.cancelled.inc(n) if n else None,
        )
        batcher.start()
        self.metrics.bind_queue_depth(lambda: batcher.depth)
        self.batcher = batcher
        logger.info("generator %s ready in %.1f s", self.checkpoint[:12], time.perf_counter() - start)

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    # -- the request path ------------------------------------------------------------------------
    def ids_for(
        self, *, image_sha: str, mask_sha: str, params: dict, seed: int, num_samples: int
    ) -> list[str]:
        return negative_ids(
            image_sha=image_sha, mask_sha=mask_sha, params=params, seed=seed,
            num_samples=num_samples, checkpoint=self.checkpoint,
        )

    def lookup(self, ids: list[str]) -> list[Served] | None:
        """All samples from the store, or None if any is missing or corrupt."""
        found = []
        for negative_id in ids:
            before = self.store.corrupt_count
            entry = self.store.get(negative_id)
            if self.store.corrupt_count > before:
                self.metrics.store_corrupt.inc()
            if entry is None:
                return None
            found.append(Served(entry.id, entry.png, entry.meta, cached=True))
        return found

    def enqueue(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        *,
        image_sha: str,
        mask_sha: str,
        params: dict[str, Any],
        seed: int,
        ids: list[str],
    ) -> PendingNegatives:
        """Queue the pair for the batcher now (QueueFullError if full); await ``.finish()``."""
        assert self.batcher is not None, "enqueue() before the generator was loaded"
        norm = negative_params(**params)
        kwargs = {**norm, "seed": int(seed), "num_samples": len(ids)}
        future = self.batcher.enqueue(image, mask, kwargs)
        return PendingNegatives(self, future, image_sha, mask_sha, norm, int(seed), ids)

    def _store_samples(
        self, samples, ids, *, image_sha, mask_sha, norm, seed, timing, created
    ) -> list[Served]:
        served = []
        for k, (negative_id, sample) in enumerate(zip(ids, samples, strict=True)):
            if int(sample.seed) != seed + k:  # the ids assume the predictor's seed contract
                raise RuntimeError(f"sample {k} has seed {sample.seed}, expected {seed + k}")
            t0 = time.perf_counter()
            png = encode_png(np.asarray(sample.image))
            meta = {
                "image_sha256": image_sha,
                "mask_sha256": mask_sha,
                "params": norm,
                "seed": seed + k,
                "method": str(sample.method),
                "checkpoint": self.checkpoint,
                "versions": self.versions,
                "timings": {
                    "queue_ms": timing.queue_ms,
                    "generate_ms": timing.generate_ms,
                    "batch_size": float(timing.batch_size),
                    "encode_ms": (time.perf_counter() - t0) * 1e3,
                },
                "scores": {str(name): float(v) for name, v in dict(sample.scores).items()},
                "created": created,
            }
            stored = self.store.put(negative_id, png, meta, keep=tuple(ids))
            served.append(Served(negative_id, png, stored, False))
        return served


@dataclass
class PendingNegatives:
    """Queued work of one request: ``future`` (cancel to drop it) and ``finish()``."""

    state: ServiceState
    future: asyncio.Future
    image_sha: str
    mask_sha: str
    norm: dict[str, Any]
    seed: int
    ids: list[str]

    async def finish(self) -> list[Served]:
        """Wait for the batch, then encode and store each sample (in a thread)."""
        try:
            samples, timing = await self.future
        finally:
            if not self.future.done():
                self.future.cancel()
        if len(samples) != len(self.ids):
            raise RuntimeError(f"generator gave {len(samples)} samples, asked {len(self.ids)}")
        created = datetime.now(UTC).isoformat()
        # PNG encoding and file writes run in a thread: the event loop keeps taking requests.
        served = await asyncio.to_thread(
            self.state._store_samples, samples, self.ids, image_sha=self.image_sha,
            mask_sha=self.mask_sha, norm=self.norm, seed=self.seed, timing=timing,
            created=created,
        )
        self.state.metrics.generated.inc(len(served))
        return served
