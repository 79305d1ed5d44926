"""How a window's fill reaches the input's resolution: resizing between the input and the model's
grid, and the two native-resolution compositions of ``NegativeGenerator`` (``native_coarse``,
``texture_match``). Pure functions of numpy arrays and a backend with a ``coarse`` channel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from generator.kriging import prior_fill
from generator.masks import ring_texture_gain
from shared.metrics import high_pass

TEXTURE_SIGMA = 1.0  # px: the high-pass band texture_match keeps (shared.metrics.high_pass's σ)
LOWCUT_PASSES = 2  # passes of remove_low_band where a generator sets texture_lowcut_sigma


def to_grid(x: np.ndarray, side: int) -> torch.Tensor:
    """HxW or HxWxC float → (C, side, side), antialiased bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if t.shape[-2:] == (side, side):
        return t
    return F.interpolate(t[None], size=(side, side), mode="bilinear", antialias=True)[0]


def hole_to_grid(region: np.ndarray, side: int) -> torch.Tensor:
    """Bool HxW → (1, side, side) float; any overlap with the region makes a hole pixel."""
    t = torch.from_numpy(region.astype(np.float32))[None, None]
    if t.shape[-2:] != (side, side):
        t = F.adaptive_max_pool2d(t, side) if min(region.shape) >= side else F.interpolate(
            t, size=(side, side), mode="nearest"
        )
    return (t[0] > 0).float()


def upsample(fill: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(R,R,C) → (H,W,C) bilinear."""
    if fill.shape[:2] == shape:
        return fill
    t = torch.from_numpy(np.ascontiguousarray(fill)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


def native_base(backend, image, region, side, prior: str = "biharmonic") -> tuple[np.ndarray, np.ndarray]:
    """What every sample of one view shares: the classical fill of ``image`` at its own
    resolution (float64, H×W; ``prior``: scikit-image's exact biharmonic solve, or
    :func:`generator.kriging.stationary_fill`'s choice for ``"kriging"``) and the backend's coarse
    channel on the ``side``² grid (what its learned residual was added to). Computed once per view,
    not per sample."""
    grid_coarse = backend.coarse(to_grid(image, side)[None], hole_to_grid(region, side)[None])
    native = prior_fill(image.astype(np.float64), region, prior)
    return native, grid_coarse[0, 0].cpu().numpy()


def residual_on_native_coarse(base, image, fill) -> np.ndarray:
    """(H, W, 1) fill = prior(image at H×W) + upsample(fill − coarse(image at the grid));
    ``base`` from :func:`native_base` (prior: biharmonic unless the generator says otherwise).

    The native fill is scikit-image's exact biharmonic solve (a sparse direct solver): the
    model's own 100-step conjugate-gradient coarse fill is far from converged on holes of a
    few hundred native pixels (session 10: no gain with it at 512²)."""
    native, up = base[0], _residual(base, image, fill)
    return np.clip(native + up, 0.0, 1.0)[..., None].astype(np.float32)


def remove_low_band(texture: np.ndarray, region: np.ndarray, sigma: float,
                    passes: int = LOWCUT_PASSES) -> np.ndarray:
    """``t ← 1_region · (t − G_σ * t)``, ``passes`` times (float HxW, bool HxW).

    Each pass multiplies the texture's spectrum by ``1 − ĝ_σ(ω)`` (``ĝ_σ = exp(−σ²ω²/2)``, the
    Gaussian's transfer function; the indicator only keeps the fill inside the hole), so what a
    σ-blur still sees of the result, ``ĝ_σ (1 − ĝ_σ)^passes``, is at most
    ``passes^passes / (passes + 1)^(passes + 1)`` of the texture at any frequency (0.15 for two
    passes), against ``ĝ_σ`` untouched. On a whole fill less goes: cutting at the hole's edge
    puts some low band back and the ring-matched gain, refitted on what is left, grows — on a
    blobby residual the σ-blurred change drops to about half (``tests/generator/
    test_texture_lowcut.py``)."""
    t = np.where(region, texture, 0.0)
    for _ in range(passes):
        t = np.where(region, t - ndimage.gaussian_filter(t, sigma), 0.0)
    return t


def texture_on_native_coarse(base, image, region, fill, lowcut_sigma: float = 0.0) -> np.ndarray:
    """(H, W, 1) fill = prior(image) + g · T inside the region, T = the high-pass of the learned
    residual (σ = ``TEXTURE_SIGMA``) with, where ``lowcut_sigma`` > 0, its band under a
    ``lowcut_sigma`` blur removed (:func:`remove_low_band`: the prior alone sets the fill's low
    frequencies); g from :func:`generator.masks.ring_texture_gain` (texture energy = the ring's)."""
    native, up = base[0], _residual(base, image, fill)
    texture = np.where(region, high_pass(up, TEXTURE_SIGMA), 0.0)
    if lowcut_sigma > 0:
        texture = remove_low_band(texture, region, lowcut_sigma)
    gain = ring_texture_gain(native, texture, image, region, sigma=TEXTURE_SIGMA)
    return np.clip(native + gain * texture, 0.0, 1.0)[..., None].astype(np.float32)


def _residual(base, image, fill) -> np.ndarray:
    """The learned residual (fill − the grid's coarse channel) at the input's resolution, float64."""
    residual = fill[..., 0] - base[1]
    if residual.shape == image.shape:
        return residual.astype(np.float64)
    return upsample(residual[..., None].astype(np.float32), image.shape[:2])[..., 0].astype(np.float64)
