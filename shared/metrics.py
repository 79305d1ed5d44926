"""Segmentation and inpainting metrics, with their edge cases stated.

Segmentation (``pred``, ``gt``: boolean HxW arrays of the same shape):

* ``dice = 2|P∩G| / (|P|+|G|)``, ``iou = |P∩G| / |P∪G|``.
* ``nsd``: normalised surface Dice (Nikolov et al. 2021) at a tolerance in pixels: the share of
  both boundaries that lies within ``tolerance_px`` of the other boundary. Computed with MONAI's
  ``compute_surface_dice`` (the field's implementation; MedCLIP-SAMv2 hand-copied one instead).
* Edge cases, the same for all three: both masks empty -> 1.0 (nothing to find, nothing
  found); exactly one empty -> 0.0. A *missing* prediction is not an empty one: callers that
  pair predictions with ground truth raise an error instead (see ``finetune.evaluation``).

Inpainting inside a mask (BraTS 2023 "local synthesis" protocol): both images are normalised to
[0, 1] (ours already are), then MSE / PSNR / SSIM are taken over the pixels inside the mask only.
SSIM is computed on the full image with scikit-image (Gaussian window, sigma 1.5) and the SSIM
*map* is averaged inside the mask (leaving out the 5-px border where the window is incomplete,
as scikit-image does), so with a mask covering everything it equals scikit-image's
``structural_similarity`` exactly.

Bootstrap confidence intervals use ``scipy.stats.bootstrap`` (percentile method); the paired
version resamples image indices, as one must when two methods are scored on the same images.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_surface_dice
from scipy import ndimage, stats
from skimage.metrics import structural_similarity


def _check_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape} but ground truth is {gt.shape}")
    if pred.ndim != 2:
        raise ValueError(f"masks must be 2-D (HxW), got {pred.ndim}-D")
    return pred.astype(bool), gt.astype(bool)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P∩G|/(|P|+|G|)``; 1.0 when both are empty."""
    pred, gt = _check_masks(pred, gt)
    denom = pred.sum() + gt.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, gt).sum() / denom)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union ``|P∩G|/|P∪G|``; 1.0 when both are empty."""
    pred, gt = _check_masks(pred, gt)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance_px: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_px`` (MONAI ``compute_surface_dice``).

    1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred, gt = _check_masks(pred, gt)
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(
            p, g, class_thresholds=[float(tolerance_px)], include_background=True
        )
    return float(value.item())


def _check_images(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask is {mask.shape} but images are {x.shape[:2]}")
    if not mask.any():
        raise ValueError("mask is empty: nothing to score inside it")
    return x, y, mask


def masked_mse(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over the pixels (and channels) inside ``mask``; images in [0, 1]."""
    x, y, mask = _check_images(x, y, mask)
    return float(np.mean((x[mask] - y[mask]) ** 2))


def masked_psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB inside ``mask`` with data range 1: ``10·log10(1/MSE)``; ``inf`` if identical."""
    mse = masked_mse(x, y, mask)
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def masked_ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Mean of scikit-image's SSIM map (Gaussian window σ=1.5, data range 1) inside ``mask``."""
    x, y, mask = _check_images(x, y, mask)
    channel_axis = -1 if x.ndim == 3 else None
    _, ssim_map = structural_similarity(
        x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        full=True, channel_axis=channel_axis,
    )
    if ssim_map.ndim == 3:
        ssim_map = ssim_map.mean(axis=-1)
    # Like scikit-image, leave out the border where the 11x11 window is incomplete
    # (pad = (11 - 1) // 2 for sigma 1.5), unless the mask lies entirely inside that border.
    pad = 5
    interior = np.zeros_like(mask)
    interior[pad:-pad, pad:-pad] = True
    inside = mask & interior
    return float(ssim_map[inside if inside.any() else mask].mean())


def high_pass(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``x − G_σ * x`` of the grayscale image (channel mean of RGB), float64: what the texture
    measures below call texture."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    return image - ndimage.gaussian_filter(image, sigma)


def high_frequency_energy(image: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> float:
    """Mean squared high-pass response ``(x − G_σ * x)²`` over the pixels inside ``mask``."""
    return float(np.mean(high_pass(image, sigma)[np.asarray(mask, bool)] ** 2))


def texture_ratio(fill: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """High-frequency energy of ``fill`` inside ``mask`` divided by that of ``reference``.

    1.0 means the fill is as textured as the reference (the GT negative, or surrounding tissue);
    a smooth, blurry fill scores well below 1 (biharmonic inpainting ≈ 0.3 in our trials).
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("mask is empty: no fill to measure")
    ref = high_frequency_energy(reference, mask)
    if ref == 0:
        raise ValueError("reference has no high-frequency energy inside the mask")
    return high_frequency_energy(fill, mask) / ref


def bootstrap_ci(
    values: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its percentile-bootstrap confidence interval.

    With fewer than two values the interval is degenerate (lo = hi = mean).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no values to summarise")
    mean = float(values.mean())
    if values.size < 2 or np.all(values == values[0]):
        return mean, mean, mean
    res = stats.bootstrap(
        (values,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
        method="percentile", rng=np.random.default_rng(seed),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(mean(a − b), lo, hi)`` resampling the shared image indices (paired design)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    return bootstrap_ci(a - b, confidence=confidence, n_resamples=n_resamples, seed=seed)
