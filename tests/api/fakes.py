"""A tiny generator that honours the NegativeGenerator contract (for service tests only).

It fills the dilated mask with a smooth noise field drawn from ``seed + k`` (sample k), pastes the
input back outside the dilated mask exactly, and records every call. ``gate`` (when given) makes
each call wait until it is set, so tests can hold the worker busy.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from generator.predictor import GenerationInputError, NegativeResult

METHODS = ("diffusion", "biharmonic")


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius == 0:
        return mask.copy()
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return ndimage.binary_dilation(mask, structure=(yy**2 + xx**2) <= radius**2)


def fake_fill(image: np.ndarray, mask: np.ndarray, *, seed: int, dilation_px: int) -> np.ndarray:
    """The fake's output for one sample: smooth noise inside the dilated mask."""
    region = dilate(mask, dilation_px)
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(image.shape[:2]), sigma=2.0)
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
    noise = noise.astype(np.float32)
    if image.ndim == 3:
        noise = np.repeat(noise[..., None], image.shape[2], axis=2)
    region_full = region if image.ndim == 2 else region[..., None]
    return np.where(region_full, noise, image).astype(np.float32)


@dataclass
class FakeGenerator:
    checkpoint_hash: str = "f" * 64
    delay_s: float = 0.0  # sleep per call, to make batching observable
    gate: threading.Event | None = None  # when set, every call waits for it
    calls: list[dict] = field(default_factory=list)  # one entry per generate() call
    started: threading.Event = field(default_factory=threading.Event)  # set when a call begins

    def generate(self, images, masks, *, num_samples=1, seed=0, steps=20, strength=1.0,
                 dilation_px=2, method="diffusion", see_through_px=0.0):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if method not in METHODS:
            raise GenerationInputError(f"unknown method {method!r}; expected one of {METHODS}")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls.append({
            "batch": len(images),
            "image_hashes": [hashlib.sha256(np.ascontiguousarray(i).tobytes()).hexdigest()
                             for i in images],
            "num_samples": num_samples, "seed": seed, "steps": steps, "method": method,
            "see_through_px": see_through_px,
        })
        seeds = [seed] * len(images) if isinstance(seed, int) else list(seed)
        return [
            [NegativeResult(fake_fill(im, m, seed=s + k, dilation_px=dilation_px), s + k,
                            method, {"fill_mean": float(fake_fill(im, m, seed=s + k,
                                                                   dilation_px=dilation_px).mean())})
             for k in range(num_samples)]
            for im, m, s in zip(images, masks, seeds, strict=True)
        ]

    @property
    def generated_images(self) -> int:
        return sum(c["batch"] for c in self.calls)
