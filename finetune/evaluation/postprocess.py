"""Saliency map -> coarse binary mask -> prompts (boxes / points) for SAM-style segmenters.

MedCLIP-SAMv2's post-processing (k-means with 2 clusters, or a fixed threshold, then keep the k
largest connected components) re-written for in-memory arrays. Differences from upstream:
an empty or constant map gives an empty mask instead of crashing, exactly ``k`` components are
kept (upstream keeps every component whose size ties one of the k largest), and boxes can be
dilated (M2IB maps are peaky, so raw boxes come out small).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans

BinarizeMethod = Literal["kmeans", "threshold"]
BoxMode = Literal["union", "components"]
ComponentRule = Literal["largest", "peak"]

# 8-connectivity, as cv2.connectedComponentsWithStats uses by default upstream.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_map(saliency: np.ndarray) -> np.ndarray:
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2:
        raise ValueError(f"saliency map must be 2-D (H, W), got shape {saliency.shape}")
    if not np.all(np.isfinite(saliency)):
        raise ValueError("saliency map contains NaN or infinite values")
    return saliency


def kmeans_binarize(saliency: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Two-cluster k-means on the pixel values; the cluster with the higher centroid is foreground.

    Args:
        saliency: (H, W) float map (any range).
        seed: k-means initialisation seed (upstream uses ``random_state=10``).
    Returns:
        (H, W) bool mask; all False when the map is constant (no foreground to find).
    """
    saliency = _check_map(saliency)
    if np.ptp(saliency) <= 1e-12:
        return np.zeros(saliency.shape, dtype=bool)
    values = saliency.reshape(-1, 1)
    km = KMeans(n_clusters=2, random_state=seed, n_init=1).fit(values)
    foreground = int(np.argmax(km.cluster_centers_.ravel()))
    return (km.labels_ == foreground).reshape(saliency.shape)


def threshold_binarize(saliency: np.ndarray, *, threshold: float) -> np.ndarray:
    """Pixels strictly above ``threshold`` are foreground. (H, W) float -> (H, W) bool."""
    saliency = _check_map(saliency)
    return saliency > threshold


def keep_largest_components(mask: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest 8-connected components of a bool mask (ties: lower label wins)."""
    if k < 1:
        raise ValueError(f"number of components to keep must be >= 1, got {k}")
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n <= k:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]  # component sizes, label 1..n
    order = np.argsort(-sizes, kind="stable")[:k] + 1
    return np.isin(labels, order)


def keep_peak_component(mask: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """Keep the 8-connected component of ``mask`` that holds the saliency maximum (the pixel the
    pointing game scores; first maximum in row-major order on ties). Empty if that pixel is not
    foreground (e.g. a threshold above the map's maximum)."""
    mask = np.asarray(mask, dtype=bool)
    labels, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    peak = labels.flat[int(np.argmax(saliency))]
    return labels == peak if peak else np.zeros_like(mask)


def coarse_mask(
    saliency: np.ndarray,
    *,
    method: BinarizeMethod = "kmeans",
    threshold: float = 0.3,
    num_components: int = 1,
    component: ComponentRule = "largest",
    seed: int = 0,
) -> np.ndarray:
    """Saliency (H, W) -> coarse bool mask: binarize, then keep components.

    ``component``: "largest" keeps the ``num_components`` largest (upstream); "peak" keeps the one
    component holding the map's maximum, so the prompt sits where the pointing game looks
    (``num_components`` is then ignored). An all-empty result is a legitimate outcome (the caller
    counts it), never an error.
    """
    if component not in ("largest", "peak"):
        raise ValueError(f"unknown component rule {component!r}; expected 'largest' or 'peak'")
    if method == "kmeans":
        mask = kmeans_binarize(saliency, seed=seed)
    elif method == "threshold":
        mask = threshold_binarize(saliency, threshold=threshold)
    else:
        raise ValueError(f"unknown binarize method {method!r}; expected 'kmeans' or 'threshold'")
    if not mask.any():
        return mask
    if component == "peak":
        return keep_peak_component(mask, saliency)
    return keep_largest_components(mask, num_components)


def mask_to_boxes(mask: np.ndarray, *, mode: BoxMode = "union", dilation_px: int = 0) -> np.ndarray:
    """Bounding boxes of a bool mask, XYXY with inclusive pixel indices (MedSAM's convention).

    Args:
        mask: (H, W) bool.
        mode: "union" -> one box around all foreground; "components" -> one box per
            8-connected component (sorted by component size, largest first).
        dilation_px: grow every side by this many pixels, clipped to the image.
    Returns:
        (K, 4) int64 array ``[x_min, y_min, x_max, y_max]``; K = 0 for an empty mask.
    """
    if dilation_px < 0:
        raise ValueError(f"box dilation must be >= 0 pixels, got {dilation_px}")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    if not mask.any():
        return np.zeros((0, 4), dtype=np.int64)
    if mode == "union":
        regions = [mask]
    elif mode == "components":
        labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel())[1:]
        regions = [labels == (i + 1) for i in np.argsort(-sizes, kind="stable")]
    else:
        raise ValueError(f"unknown box mode {mode!r}; expected 'union' or 'components'")
    boxes = []
    for region in regions:
        ys, xs = np.nonzero(region)
        boxes.append(
            [
                max(int(xs.min()) - dilation_px, 0),
                max(int(ys.min()) - dilation_px, 0),
                min(int(xs.max()) + dilation_px, w - 1),
                min(int(ys.max()) + dilation_px, h - 1),
            ]
        )
    return np.asarray(boxes, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """Grow (or shrink) XYXY inclusive boxes by ``scale`` about their centres, clipped to the
    image: a box of w × h pixels becomes ≈ scale·w × scale·h (rounded outwards to whole pixels).
    The growth follows the box, so a small lesion's box grows by a few pixels and a large one's by
    more (a fixed dilation does the opposite in relative terms)."""
    if scale <= 0:
        raise ValueError(f"box scale must be > 0, got {scale}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if scale == 1 or len(boxes) == 0:
        return boxes.copy()
    h, w = shape
    size = boxes[:, 2:] - boxes[:, :2] + 1  # (K, 2) width, height in pixels
    grow = (scale - 1) * size / 2  # per side
    lo = np.floor(boxes[:, :2] - grow).astype(np.int64)
    hi = np.ceil(boxes[:, 2:] + grow).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w - 1, h - 1])
    return np.concatenate([lo, np.maximum(hi, lo)], axis=1)


def sample_points(mask: np.ndarray, num_points: int, *, seed: int = 0) -> np.ndarray:
    """Up to ``num_points`` distinct foreground pixels as (K, 2) float ``[x, y]`` (SAM order)."""
    if num_points < 1:
        raise ValueError(f"number of point prompts must be >= 1, got {num_points}")
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if len(xs) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(xs), size=min(num_points, len(xs)), replace=False)
    return np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
