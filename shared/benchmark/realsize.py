"""Real-size test images with synthetic lesions and exact lesion-free references (issue 18).

``build_realsize(source, size, n, seed=)`` cuts ``n`` square ``size``² images out of the native
frames of one anatomy source (``shared.benchmark.sources``) and puts one synthetic lesion
(``shared.benchmark.lesions``) in each:

* **Crop.** A frame whose short side is at least ``size`` gives a native (1:1) ``size``² crop
  centred on a random tissue pixel (shifted to lie inside the frame); ``scale`` = 1. A smaller
  frame gives its largest square (side = short side, placed along the long axis around a tissue
  pixel), resized up to ``size`` bilinearly (the tissue map by nearest neighbour);
  ``scale`` = short side / ``size`` < 1 native pixels per output pixel.
* **Lesion size.** The area fraction ``a`` is drawn log-uniform in ``AREA_RANGE`` (5e-4 to 5e-2:
  sub-0.1 % lung nodules up to a few percent of a BraTS slice). The preset's mean radius ``R0`` is
  replaced so that the *mask* covers ``a`` of the image: the mask is ``r < k·R0·b(θ)`` with
  ``k = 1 + edema_width`` and ``b(θ) = max(1 + Σ a_j cos(jθ + φ_j), 0.45)``, whose area is
  ``π (k R0)² · mean_θ b²``, so ``R0 = sqrt(a / (π k² mean_θ b²))`` (``sqrt(a/π)`` for a round
  lesion without edema).
* **Placement.** The centre is a random tissue pixel at least ``k·R0·max_θ b`` + ``BORDER_PX``
  pixels from every edge, so the whole lesion (and its dilated hole) lies inside the image, and
  where at most ``MAX_SATURATED`` of the square of half-side ``k·R0·max_θ b`` around it is clipped
  to 0 or 1 (CT's soft-tissue window clips gas and bone: a mass is not put inside bowel gas, and
  a flat clipped hole would make every fill exact).
* **Appearance.** The preset follows the modality (``PRESET_OF``); ``lesions.render`` draws it.

The ground-truth negative is the crop itself (float32, unquantised); the positive is the crop with
the rendered lesion (uint8 levels / 255) inside the mask, so ``image == gt_negative`` exactly
outside the mask. Item ``i`` depends only on ``(source, size, seed, i)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from shared.benchmark.lesions import Lesion, render, sample_lesion
from shared.benchmark.sources import SOURCES, frames

AREA_RANGE = (5e-4, 5e-2)  # lesion (mask) area as a fraction of the image, drawn log-uniform
BORDER_PX = 3  # free pixels between the lesion mask and the image edge (room for dilation)
MAX_SATURATED = 0.25  # largest share of clipped (0 or 1) pixels around an admissible centre
PRESET_OF = {  # lesion appearance per modality; CT gets a mass that replaces tissue
    "mri": "brain_mri", "ct": "brain_mri", "xray": "chest_xray", "us": "breast_us",
    "fundus": "retina",
}


@dataclass(frozen=True)
class RealsizeItem:
    """One real-size test image: a positive, its lesion mask and its exact lesion-free image."""

    image: np.ndarray  # float32 size×size in [0,1], the positive
    mask: np.ndarray  # bool size×size, the lesion
    gt_negative: np.ndarray  # float32 size×size, the crop without the lesion (== image off mask)
    tissue: np.ndarray  # bool size×size, where the source allows a lesion centre
    source: str  # anatomy source name (shared.benchmark.sources.SOURCES)
    preset: str  # lesion appearance domain (shared.benchmark.lesions.PRESETS)
    scale: float  # native pixels per output pixel (1.0: native crop; < 1: upsampled)
    area_fraction: float  # the drawn lesion area / image area (the mask's area matches it)
    frame: int  # index of the frame in frames(source)
    box: tuple[int, int, int]  # (top, left, side) of the crop in native pixels
    lesion: Lesion  # the rendered lesion's parameters (fractions of ``size``)


def _rng(source: str, size: int, seed: int, i: int) -> np.random.Generator:
    """A generator keyed by (source, size, seed, i); crc32 keeps the source name stable across runs."""
    return np.random.default_rng([seed, zlib.crc32(source.encode()), size, i])


def _square_around(length: int, side: int, centre: int) -> int:
    """Start of a ``side``-long window on ``[0, length)`` centred on ``centre``, clipped inside."""
    return int(np.clip(centre - side // 2, 0, length - side))


def crop_frame(
    image: np.ndarray, tissue: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int, int]]:
    """A ``size``² crop around a random tissue pixel: ``(image, tissue, scale, (top, left, side))``.

    ``side = size`` (native, scale 1) when the frame's short side is ≥ ``size``; otherwise
    ``side`` = the short side, resized up to ``size`` (scale = side / size).
    """
    h, w = image.shape
    side = min(size, h, w)
    ys, xs = np.nonzero(tissue)
    if ys.size == 0:
        cy, cx = h // 2, w // 2
    else:
        j = int(rng.integers(ys.size))
        cy, cx = int(ys[j]), int(xs[j])
    top, left = _square_around(h, side, cy), _square_around(w, side, cx)
    img = image[top : top + side, left : left + side]
    tis = tissue[top : top + side, left : left + side]
    if side == size:
        return img.astype(np.float32, copy=True), tis.copy(), 1.0, (top, left, side)
    up = resize(img.astype(np.float64), (size, size), order=1, anti_aliasing=False)
    tis_up = resize(tis, (size, size), order=0, anti_aliasing=False).astype(bool)
    return np.clip(up, 0.0, 1.0).astype(np.float32), tis_up, side / size, (top, left, side)


def _boundary_factor(lesion: Lesion) -> np.ndarray:
    """``b(θ) = max(1 + Σ_j a_j cos(jθ + φ_j), 0.45)`` on a fine θ grid (as ``lesions.render``)."""
    theta = np.linspace(0.0, 2 * np.pi, 3600, endpoint=False)
    b = np.ones_like(theta)
    for j, (a, phi) in enumerate(lesion.harmonics, start=2):
        b += a * np.cos(j * theta + phi)
    return np.maximum(b, 0.45)


def radius_for_area(lesion: Lesion, area_fraction: float) -> float:
    """Mean radius ``R0`` (fraction of the side) whose mask covers ``area_fraction`` of the image:
    ``R0 = sqrt(a / (π k² mean_θ b(θ)²))``, ``k = 1 + edema_width``."""
    b = _boundary_factor(lesion)
    k = 1.0 + lesion.edema_width
    return float(np.sqrt(area_fraction / (np.pi * k * k * np.mean(b * b))))


def saturated_share(background: np.ndarray, half_side: int) -> np.ndarray:
    """Share of clipped pixels (``x ≤ 0`` or ``x ≥ 1``) in the ``(2·half_side + 1)``² square
    around each pixel (zero padding outside the image)."""
    clipped = ((background <= 0.0) | (background >= 1.0)).astype(np.float64)
    return ndimage.uniform_filter(clipped, 2 * half_side + 1, mode="constant")


def place_lesion(
    lesion: Lesion, tissue: np.ndarray, rng: np.random.Generator, background: np.ndarray
) -> Lesion:
    """``lesion`` re-centred on a random tissue pixel whose distance to every edge is at least the
    mask's reach ``k·R0·max_θ b`` (pixels) + ``BORDER_PX`` and whose surroundings (half-side =
    the reach) are at most ``MAX_SATURATED`` clipped; the conditions are dropped in the order
    clipping, tissue when no pixel meets them all."""
    size = tissue.shape[0]
    reach = (1.0 + lesion.edema_width) * lesion.radius * size * float(_boundary_factor(lesion).max())
    m = min(int(np.ceil(reach)) + BORDER_PX, (size - 1) // 2)
    inside = np.zeros_like(tissue)
    inside[m : size - m, m : size - m] = True
    unclipped = saturated_share(background, int(np.ceil(reach))) <= MAX_SATURATED
    for allowed in (tissue & inside & unclipped, tissue & inside, inside):
        candidates = np.argwhere(allowed)
        if len(candidates):
            break
    cy, cx = candidates[int(rng.integers(len(candidates)))]
    return replace(lesion, cy=float(cy / size), cx=float(cx / size))


def make_item(source: str, size: int, seed: int, i: int) -> RealsizeItem:
    """Item ``i`` of ``build_realsize(source, size, ·, seed=seed)``."""
    preset = PRESET_OF.get(SOURCES[source].modality)
    if preset is None:
        raise ValueError(f"source {source!r} ({SOURCES[source].modality}) has no lesion preset")
    rng = _rng(source, size, seed, i)
    pool = frames(source)
    k = int(rng.integers(len(pool)))
    background, tissue, scale, box = crop_frame(*pool[k], size, rng)
    area = float(np.exp(rng.uniform(np.log(AREA_RANGE[0]), np.log(AREA_RANGE[1]))))
    lesion = sample_lesion(preset, rng, tissue)
    lesion = place_lesion(replace(lesion, radius=radius_for_area(lesion, area)), tissue, rng,
                          background)
    positive, mask = render(preset, background, lesion, rng)
    image = np.where(mask, positive.astype(np.float32) / 255.0, background).astype(np.float32)
    return RealsizeItem(image=image, mask=mask, gt_negative=background, tissue=tissue,
                        source=source, preset=preset, scale=scale, area_fraction=area, frame=k,
                        box=box, lesion=lesion)


def build_realsize(source: str, size: int, n: int, *, seed: int = 0) -> list[RealsizeItem]:
    """``n`` real-size test items of ``source`` at ``size``², deterministic per (source, size, seed)
    (the first ``m`` items of ``n > m`` are those of ``m``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown anatomy source {source!r}; choose from {sorted(SOURCES)}")
    if size < 16 or n < 0:
        raise ValueError(f"need size >= 16 and n >= 0, got size={size}, n={n}")
    return [make_item(source, size, seed, i) for i in range(n)]
