"""Training-time augmentation of (image, lesion mask, negative) triples at model resolution.

Why: the benchmark's anatomy comes from few sources (one MNI volume, one radiograph, one fundus
photograph), so a CLIP trained on its images as they are learns *where* the anatomy is, not what a
lesion looks like. Random geometry (flips, 90° turns, rotation, zoom, shift) and intensity
(gamma, contrast, brightness, blur, noise) break that memory; a scan from another scanner or
patient differs from the training anatomy in exactly these ways. Optional and off by default:
random non-monotone intensity maps (``lut_prob``, SynthSeg-style) and down-up resizing
(``low_res_prob``) — measured in pre-training and not adopted (bench/results/clip_contrast_rand.md).

One draw per sample is applied to the positive, its mask and its negative alike (a pair still
differs only by the lesion). Geometry is one affine warp (``torch.nn.functional.affine_grid`` +
``grid_sample``, reflection padding: no black corners); the mask is warped bilinearly and
thresholded at 0.5. Everything draws from the torch RNG, which the trainer seeds per (seed, step,
micro-batch, rank), so augmented runs stay exactly resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; ``enabled: false`` leaves batches untouched."""

    enabled: bool = False  # augment training batches (pre-training the embedded CLIP: on)
    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random multiple of 90° (scans come in every orientation)
    max_rotation_deg: float = 15.0  # extra uniform rotation in [-r, r]
    zoom: tuple[float, float] = (1.0, 1.5)  # magnification range (>1 zooms in: lesions grow)
    max_shift: float = 0.1  # translation, fraction of the side
    gamma: tuple[float, float] = (0.6, 1.6)  # intensity gamma x -> x^g (log-uniform)
    contrast: tuple[float, float] = (0.7, 1.3)  # x -> c·(x − mean) + mean
    brightness: float = 0.1  # uniform offset in [-b, b]
    blur_prob: float = 0.3  # chance of a Gaussian blur
    max_blur_sigma: float = 1.0  # its σ in pixels, uniform in (0, max]
    max_noise: float = 0.04  # Gaussian noise std, uniform in [0, max]
    # contrast randomisation (SynthSeg-style, Billot et al. 2023): with this chance, intensities
    # pass through a random *non-monotone* piecewise-linear map (:func:`random_lut`), so tissue
    # and lesion may swap brightness and no source's grey levels can be memorised; 0 = off
    lut_prob: float = 0.0
    lut_knots: int = 5
    # resolution randomisation: with this chance the image is resized down by a factor uniform in
    # [1, max_downsample] and back (bilinear), as a small frame upsampled to the model's size is
    low_res_prob: float = 0.0
    max_downsample: float = 1.0


def _uniform(lo: float, hi: float, n: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n)


def _affine(cfg: AugmentConfig, n: int) -> torch.Tensor:
    """(n, 2, 3) affine_grid matrices: output coords -> input coords (normalised [-1, 1])."""
    angle = _uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, n) * math.pi / 180
    if cfg.rot90:
        angle = angle + torch.randint(0, 4, (n,)) * (math.pi / 2)
    scale = 1.0 / _uniform(*cfg.zoom, n)  # sampling a smaller input window = zooming in
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    sx = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    sy = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    theta[:, :, 2] = _uniform(-2 * cfg.max_shift, 2 * cfg.max_shift, 2 * n).view(n, 2)
    return theta


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur of (B, C, S, S); σ = 0 leaves a sample unchanged."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, 2r+1); σ → 0 gives a delta
    b, c, h, w = x.shape
    xp = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    kk = k.repeat_interleave(c, dim=0)
    xp = F.conv2d(xp, kk.view(b * c, 1, 1, -1), groups=b * c)
    xp = F.conv2d(xp, kk.view(b * c, 1, -1, 1), groups=b * c)
    return xp.view(b, c, h, w)


def random_lut(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Per-sample piecewise-linear intensity map: ``x`` (B, P, S, S) in [0, 1], ``knots`` (B, K)
    the map's values at K equally spaced inputs 0, 1/(K−1), …, 1 (any order: non-monotone)."""
    k = knots.shape[1] - 1
    pos = x.clamp(0, 1) * k
    lo = pos.floor().clamp(max=k - 1)
    frac = pos - lo
    idx = lo.long().flatten(1)  # (B, P·S·S)
    left = torch.gather(knots, 1, idx).view_as(x)
    right = torch.gather(knots, 1, idx + 1).view_as(x)
    return left + frac * (right - left)


def _low_res(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each sample of (B, P, S, S) resized to S / factor and back (bilinear; factor 1 = unchanged)."""
    out = x.clone()
    s = x.shape[-1]
    for i in torch.nonzero(factor > 1).flatten().tolist():
        small = max(4, round(s / float(factor[i])))
        down = F.interpolate(x[i : i + 1], size=(small, small), mode="bilinear", antialias=True,
                             align_corners=False)
        out[i] = F.interpolate(down, size=(s, s), mode="bilinear", align_corners=False)[0]
    return out


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, negatives: torch.Tensor | None, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment a batch: ``images`` uint8 (B, S, S), ``masks`` bool (B, S, S), ``negatives``
    uint8 (B, S, S) or None -> the same types and shapes, one random draw per sample shared by the
    three. Identity when ``cfg.enabled`` is False."""
    if not cfg.enabled:
        return images, masks, negatives
    b = images.shape[0]
    stack = [images.float() / 255.0, masks.float()]
    if negatives is not None:
        stack.append(negatives.float() / 255.0)
    x = torch.stack(stack, dim=1)  # (B, 2 or 3, S, S): image, mask, negative
    grid = F.affine_grid(_affine(cfg, b), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out_mask = x[:, 1] >= 0.5
    pix = x[:, [0, 2]] if negatives is not None else x[:, :1]  # (B, P, S, S) pixel channels
    sigma = torch.where(torch.rand(b) < cfg.blur_prob,
                        _uniform(0.0, cfg.max_blur_sigma, b), torch.zeros(b))
    if cfg.max_blur_sigma > 0 and bool((sigma > 0).any()):
        pix = _blur(pix, sigma)
    if cfg.low_res_prob > 0 and cfg.max_downsample > 1:
        factor = torch.where(torch.rand(b) < cfg.low_res_prob,
                             _uniform(1.0, cfg.max_downsample, b), torch.ones(b))
        pix = _low_res(pix, factor)
    if cfg.lut_prob > 0:
        use = torch.rand(b) < cfg.lut_prob
        identity = torch.linspace(0, 1, cfg.lut_knots).expand(b, -1)
        knots = torch.where(use[:, None], torch.rand(b, cfg.lut_knots), identity)
        pix = random_lut(pix, knots)
    gamma = torch.exp(_uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), b)).view(b, 1, 1, 1)
    pix = pix.clamp(0, 1) ** gamma
    mean = pix[:, :1].mean(dim=(2, 3), keepdim=True)  # the positive's mean, shared by its pair
    pix = _uniform(*cfg.contrast, b).view(b, 1, 1, 1) * (pix - mean) + mean
    pix = pix + _uniform(-cfg.brightness, cfg.brightness, b).view(b, 1, 1, 1)
    noise = torch.randn_like(pix[:, :1]) * _uniform(0.0, cfg.max_noise, b).view(b, 1, 1, 1)
    pix = (pix + noise).clamp(0, 1)  # the same noise field on the positive and its negative
    pix = (pix * 255).round().to(torch.uint8)
    return pix[:, 0], out_mask, (pix[:, 1] if negatives is not None else None)
