"""Mask geometry for the generator: dilation, exact paste-back, coarse fills, self-supervised masks.

All functions take numpy arrays (HxW bool masks, HxW or HxWxC float images) or torch batches
(B,1,H,W) where stated; nothing here holds state.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def disk(radius_px: int) -> np.ndarray:
    """Boolean disk footprint of the given radius: (2r+1, 2r+1), True where x² + y² ≤ r²."""
    if radius_px < 0:
        raise ValueError(f"dilation radius must be >= 0 pixels, got {radius_px}")
    r = int(radius_px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Dilate a bool HxW mask by a disk of ``radius_px`` pixels (0 returns a copy).

    A pixel joins when some mask pixel lies within Euclidean distance ``radius_px`` — exactly
    ``binary_dilation(mask, disk(radius_px))``, computed from the distance transform in time
    linear in the pixels whatever the radius (the structuring-element form took 8 s on a 1000²
    image at radius 64).
    """
    mask = np.asarray(mask, dtype=bool)
    if radius_px < 0:
        raise ValueError(f"dilation radius must be >= 0 pixels, got {radius_px}")
    if radius_px == 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius_px


def paste_back(original: np.ndarray, generated: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Take ``generated`` inside ``region`` and ``original`` (bit-exact) everywhere else.

    original, generated: float32 HxW or HxWxC of the same shape; region: bool HxW.
    """
    if original.shape != generated.shape:
        raise ValueError(f"generated is {generated.shape} but original is {original.shape}")
    if region.shape != original.shape[:2]:
        raise ValueError(f"region is {region.shape} but image is {original.shape[:2]}")
    sel = region if original.ndim == 2 else region[..., None]
    return np.where(sel, generated.astype(original.dtype), original)


RING_PX = 4  # width of the tissue ring around a hole: the texture reference when there is no GT


TEXTURE_ESTIMATORS = ("mean", "mad")  # how the ring's texture energy is estimated


def ring_texture_energy(image: np.ndarray, region: np.ndarray, *, sigma: float = 1.0,
                        ring_px: int = RING_PX, estimator: str = "mean") -> float:
    """The texture energy a fill of ``region`` should have, estimated from the known ring
    ``dilate(region, ring_px) & ~region`` of ``image`` (float HxW), with ``h = x − G_σ * x``:

    - ``"mean"``: ``mean(h²)`` over the ring (``shared.metrics.high_frequency_energy``);
    - ``"mad"``: ``(1.4826 · median|h − median h|)²``, the variance of ``h`` from its median
      absolute deviation (Hampel 1974; Donoho & Johnstone 1994 estimate image noise this way so
      that edges, a few large responses, do not count as texture). Equal to ``"mean"`` for
      Gaussian texture; lower where the ring crosses a structure's edge — and on heavy-tailed
      real texture (speckle), which is why the generator keeps ``"mean"``
      (``bench/results/texture_ring.md``: 0.27 fewer samples in band).

    0 when the ring is empty."""
    from shared.metrics import high_pass

    region = np.asarray(region, bool)
    ring = dilate(region, ring_px) & ~region
    if not ring.any():
        return 0.0
    h = high_pass(image, sigma)[ring]
    if estimator == "mean":
        return float(np.mean(h * h))
    if estimator == "mad":
        return float((1.4826 * np.median(np.abs(h - np.median(h)))) ** 2)
    raise ValueError(f"unknown texture estimator {estimator!r}; expected one of {TEXTURE_ESTIMATORS}")


def texture_gain(base: np.ndarray, texture: np.ndarray, region: np.ndarray, target: float, *,
                 sigma: float = 1.0) -> float:
    """The gain g ≥ 0 with which ``base + g · texture`` has texture energy ``target`` inside
    ``region``.

    Texture energy is ``E(x) = mean over the region of (x − G_σ * x)²`` (``shared.metrics``'
    high-frequency energy); the high-pass is linear, so with ``a = hp(base)``, ``b = hp(texture)``
    on the region's pixels ``E(g) = A g² + B g + C`` (A = ⟨b²⟩, B = 2⟨ab⟩, C = ⟨a²⟩) and ``g`` is
    the positive root of ``E(g) = target``. 0 when the base alone is already at least as textured,
    when the texture is flat, or when the region is empty. ``base``, ``texture``: float HxW."""
    from shared.metrics import high_pass

    region = np.asarray(region, bool)
    if not region.any():
        return 0.0
    a, b = high_pass(base, sigma)[region], high_pass(texture, sigma)[region]
    qa, qb, qc = float(np.mean(b * b)), 2.0 * float(np.mean(a * b)), float(np.mean(a * a)) - target
    if qa <= 0.0 or qc >= 0.0:
        return 0.0
    return (-qb + np.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa)


def ring_texture_gain(base: np.ndarray, texture: np.ndarray, image: np.ndarray, region: np.ndarray,
                      *, sigma: float = 1.0, ring_px: int = RING_PX, estimator: str = "mean") -> float:
    """The gain g ≥ 0 with which ``base + g · texture`` is as textured inside ``region`` as the
    input is in the ring around it: :func:`texture_gain` with the target
    :func:`ring_texture_energy` (0 when no ring exists or it is flat). ``base``, ``texture``,
    ``image``: float HxW; region: bool HxW."""
    target = ring_texture_energy(image, region, sigma=sigma, ring_px=ring_px, estimator=estimator)
    return texture_gain(base, texture, region, target, sigma=sigma) if target > 0 else 0.0


def coarse_fill(image: torch.Tensor, mask: torch.Tensor, *, levels: int = 6) -> torch.Tensor:
    """Smooth fill of the masked pixels by multi-scale normalised convolution (push-pull).

    image, mask: (B, C, H, W) and (B, 1, H, W), mask 1 = unknown. Known pixels are returned
    unchanged; unknown ones get the value of a coarse, mask-weighted image pyramid, upsampled
    bilinearly level by level (a cheap, batched stand-in for harmonic inpainting; our own code:
    no library does push-pull on torch batches). Returns (B, C, H, W).
    """
    known = 1.0 - mask
    if levels <= 0 or image.shape[-1] < 2 or image.shape[-2] < 2:
        mean = (image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1e-6)
        return image * known + mean * mask
    num = F.avg_pool2d(image * known, 2, ceil_mode=True)
    den = F.avg_pool2d(known, 2, ceil_mode=True)
    low = num / den.clamp_min(1e-6)
    low_mask = (den < 1e-6).to(image.dtype)
    low = coarse_fill(low, low_mask, levels=levels - 1)
    up = F.interpolate(low, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return image * known + up * mask


def harmonic_fill(
    image: torch.Tensor, mask: torch.Tensor, *, iters: int, levels: int = 6
) -> torch.Tensor:
    """Harmonic (Laplace) fill of the masked pixels, batched: push-pull start, Jacobi sweeps.

    Solves Δu = 0 inside the hole with the known pixels as Dirichlet boundary by ``iters`` Jacobi
    iterations u ← mean of the 4 neighbours (replicate padding at the frame), starting from
    ``coarse_fill`` so few sweeps are needed. image, mask: (B, C, H, W), (B, 1, H, W), mask 1 =
    unknown; known pixels are returned unchanged. ``iters`` = 0 is ``coarse_fill``.
    """
    u = coarse_fill(image, mask, levels=levels)
    if iters <= 0:
        return u
    known = image * (1.0 - mask)
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], dtype=u.dtype)
    kernel = kernel.to(u.device).expand(u.shape[1], 1, 3, 3)
    for _ in range(iters):
        avg = F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), kernel, groups=u.shape[1])
        u = known + avg * mask
    return u


def random_lesion_mask(
    shape: tuple[int, int], rng: np.random.Generator, *, min_radius: float, max_radius: float
) -> np.ndarray:
    """An irregular blob (a radius perturbed by low-order harmonics) centred at the origin.

    Returns a bool mask of ``shape`` centred in the frame; callers shift it with ``place_mask``.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= h / 2
    xx -= w / 2
    theta = np.arctan2(yy, xx)
    base = rng.uniform(min_radius, max_radius)
    radius = np.full_like(theta, base)
    for k in range(2, 5):
        radius += base * rng.uniform(0.0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.7, 1.3)
    rho = np.sqrt((xx * aspect) ** 2 + (yy / aspect) ** 2)
    return rho <= radius


def place_mask(
    template: np.ndarray,
    avoid: np.ndarray,
    tissue: np.ndarray,
    rng: np.random.Generator,
    *,
    tries: int = 20,
) -> np.ndarray | None:
    """Shift a lesion-shaped ``template`` so that it lies on ``tissue`` and does not touch ``avoid``.

    Self-supervised inpainting masks (Durrer et al., "Denoising Diffusion Models for Inpainting of
    Healthy Brain Tissue"): a lesion-shaped hole placed on healthy tissue away from the lesion.
    All arrays bool HxW. Returns the placed mask, or None when no placement was found.
    """
    ys, xs = np.nonzero(template)
    if ys.size == 0:
        return None
    h, w = template.shape
    cy, cx = int(ys.mean()), int(xs.mean())
    cand_y, cand_x = np.nonzero(tissue & ~avoid)
    if cand_y.size == 0:
        return None
    for _ in range(tries):
        j = rng.integers(cand_y.size)
        dy, dx = int(cand_y[j]) - cy, int(cand_x[j]) - cx
        ny, nx = ys + dy, xs + dx
        keep = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        if keep.mean() < 0.9:
            continue
        placed = np.zeros_like(template)
        placed[ny[keep], nx[keep]] = True
        if (placed & avoid).any() or (placed & tissue).mean() < 0.8 * placed.mean():
            continue
        return placed
    return None


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _replicate_pad_adjoint(z: torch.Tensor) -> torch.Tensor:
    """Adjoint of ``F.pad(·, (1, 1, 1, 1), mode="replicate")``: (.., H+2, W+2) → (.., H, W)."""
    out = z[..., 1:-1, 1:-1].clone()
    out[..., 0, :] += z[..., 0, 1:-1]
    out[..., -1, :] += z[..., -1, 1:-1]
    out[..., :, 0] += z[..., 1:-1, 0]
    out[..., :, -1] += z[..., 1:-1, -1]
    out[..., 0, 0] += z[..., 0, 0]
    out[..., 0, -1] += z[..., 0, -1]
    out[..., -1, 0] += z[..., -1, 0]
    out[..., -1, -1] += z[..., -1, -1]
    return out


def biharmonic_fill(
    image: torch.Tensor, mask: torch.Tensor, *, iters: int, levels: int = 6, tol: float = 1e-10
) -> torch.Tensor:
    """Biharmonic fill of the masked pixels, batched, by conjugate gradients.

    Minimises E(u) = Σ (Δu)² over all pixels (5-point Laplacian L, replicate padding: a zero-flux
    frame) with the known pixels fixed, i.e. solves Δ²u = 0 inside the hole — the energy
    scikit-image's ``inpaint_biharmonic`` solves with a sparse direct solver (they differ only
    where a hole touches the frame), here as ``iters`` conjugate-gradient steps on the SPD system
    P Lᵀ L P v = −P Lᵀ L u_known started from ``coarse_fill`` (P: hole projection). A biharmonic
    fill continues gradients across the hole where a harmonic one flattens them: what smooth
    anatomy such as a radiograph needs. image, mask: (B, C, H, W), (B, 1, H, W), mask 1 =
    unknown; known pixels are returned unchanged. Rows stop improving once their residual norm²
    falls below ``tol`` × its starting value (checked every 25 steps); the loop ends when all have.
    """
    u = coarse_fill(image, mask, levels=levels)
    if iters <= 0 or min(image.shape[-2:]) < 2:
        return u
    c = u.shape[1]
    kernel = _LAPLACIAN.to(u.device, u.dtype).expand(c, 1, 3, 3)
    hole = mask.expand_as(u)

    def normal_op(v: torch.Tensor) -> torch.Tensor:  # Lᵀ L v
        lap = F.conv2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        return _replicate_pad_adjoint(F.conv_transpose2d(lap, kernel, groups=c))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum((1, 2, 3), keepdim=True)

    r = -normal_op(u) * hole  # residual of the normal equations at the start
    p = r.clone()
    rr = dot(r, r)
    stop = tol * rr
    active = torch.ones_like(rr)
    for it in range(iters):
        if it % 25 == 0:  # a host sync; checked rarely so GPU kernels queue without stalls
            active = (rr > stop).to(u.dtype)  # converged rows take no more steps
            if not bool(active.any()):
                break
        ap = normal_op(p) * hole
        alpha = active * rr / dot(p, ap).clamp_min(1e-30)
        u = u + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return image * (1.0 - mask) + u * mask
