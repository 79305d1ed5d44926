"""Exemplar texture: the image's own tissue, translated into the hole (issue 18, a texture source).

The texture-matched composition (:func:`generator.compose.texture_on_native_coarse`) puts a
high-pass texture on the classical coarse prior, scaled so the fill is as textured as the known
ring around the hole. The committed texture is the learned residual's high-pass; its classical
twin is white noise. Here it is the high-pass (σ = 1 px) of *known tissue of the same image*, in a
copy of the hole's shape translated away from it: real tissue's own grain (speckle's correlation,
an MR's noise floor, trabecular bone) rather than a learned or a white one, on anatomy no model has
seen. Exemplar-based inpainting copies whole patches chosen by how well their surroundings match
the hole's (Efros & Leung 1999; Criminisi, Pérez & Toyama 2004); here only the high-pass is copied,
so the prior alone keeps setting the fill's low frequencies.

Candidate offsets lie on three rings (1, 1.5, 2 × the hole's extent plus a gap) in eight
directions. An offset is valid when the translated hole *and* its ring lie inside the image and
clear the hole dilated by ``GAP_PX`` (> 3σ of the high-pass, so no lesion edge leaks into the
copy). Valid offsets are ranked by how the translated ring's statistics match the hole's ring:
``((m_c − m_0) / s)² + log(e_c / e_0)²`` with m the ring's mean of the σ = 2 px blurred image,
s the known pixels' standard deviation and e the ring's mean squared high-pass.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from generator.masks import RING_PX, dilate
from shared.metrics import high_pass

GAP_PX = 4  # clearance between the hole and any copied pixel (the σ = 1 high-pass reaches 3 px)
SCALES = (1.0, 1.5, 2.0)  # offset length in units of the hole's extent (+ gap) per axis
DIRECTIONS = 8
TOP_K = 3  # samples draw their offset among this many best-matching candidates
LOW_SIGMA = 2.0  # px: the blur under the rings' mean level
EPS = 1e-12


def candidate_offsets(region: np.ndarray) -> list[tuple[int, int]]:
    """(dy, dx) on ``SCALES`` × ``DIRECTIONS``, per axis scaled by the hole's extent + the gap,
    distinct, in a fixed order."""
    rows, cols = np.nonzero(region)
    h, w = int(np.ptp(rows)) + 1 + GAP_PX, int(np.ptp(cols)) + 1 + GAP_PX
    out: list[tuple[int, int]] = []
    for s in SCALES:
        for k in range(DIRECTIONS):
            a = 2.0 * np.pi * k / DIRECTIONS
            off = (int(round(s * h * np.sin(a))), int(round(s * w * np.cos(a))))
            if off != (0, 0) and off not in out:
                out.append(off)
    return out


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
    """``mask`` translated by (dy, dx); None when some True pixel would leave the image."""
    rows, cols = np.nonzero(mask)
    r, c = rows + dy, cols + dx
    if r.min() < 0 or c.min() < 0 or r.max() >= mask.shape[0] or c.max() >= mask.shape[1]:
        return None
    out = np.zeros_like(mask)
    out[r, c] = True
    return out


def ranked_offsets(image: np.ndarray, region: np.ndarray) -> list[tuple[int, int]]:
    """The valid offsets (module docstring), best match first; [] when none fits or the hole
    has no ring. ``image``: float HxW, ``region``: bool HxW (the hole)."""
    region = np.asarray(region, bool)
    if not region.any():
        return []
    ring = dilate(region, RING_PX) & ~region
    if not ring.any():
        return []
    blocked = dilate(region, GAP_PX)
    hp2 = high_pass(image) ** 2
    low = ndimage.gaussian_filter(np.asarray(image, np.float64), LOW_SIGMA)
    known = ~region
    s = float(np.std(image[known])) + EPS
    m0, e0 = float(low[ring].mean()), float(hp2[ring].mean())
    scored = []
    for dy, dx in candidate_offsets(region):
        both = _shift(region | ring, dy, dx)
        if both is None or (both & blocked).any():
            continue
        ring_c = _shift(ring, dy, dx)
        m, e = float(low[ring_c].mean()), float(hp2[ring_c].mean())
        score = ((m - m0) / s) ** 2 + np.log((e + EPS) / (e0 + EPS)) ** 2
        scored.append((score, (dy, dx)))
    scored.sort(key=lambda t: t[0])  # stable: ties keep candidate order
    return [off for _, off in scored]


def translated_texture(image: np.ndarray, region: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """float64 HxW: inside ``region`` the high-pass (σ = 1 px) of ``image`` at ``region`` + offset
    (the pixel at (r, c) takes the one at (r + dy, c + dx)); 0 outside."""
    dy, dx = offset
    hp = high_pass(image)
    out = np.zeros(region.shape, dtype=np.float64)
    rows, cols = np.nonzero(region)
    out[rows, cols] = hp[rows + dy, cols + dx]
    return out
