"""Real anatomy at its own pixel scale, split by source, and the multi-scale windows the reference
model trains on (issue 18).

Why: the first generator learned a few images by heart (the benchmark's brain domain is slices of
one template volume, its retina one photograph) and saw every image squeezed onto its 64² grid.
Training draws only the ``TRAIN`` sources of ``shared.benchmark.sources`` (one volume, one series,
one photograph each; the ``HELD_OUT`` ones are refused) as windows at a random zoom of 1–4 native
pixels per model pixel: the view the lesion-window predictor
(:func:`generator.predictor.lesion_window`) gives the model at inference.

Window draw (:class:`WindowDataset`), all on the model's ``size``² output grid:
1. a source (uniform), a frame, a zoom ``z`` (log-uniform in ``zoom``), an angle (uniform) and a
   centre on tissue;
2. one resampling of the native frame: output pixel ``u`` reads native position
   ``c + z·R(θ)·(u − size/2) + d(u)``, with ``d`` a smooth random displacement (elastic
   deformation, σ = ``elastic_sigma`` model px, amplitude ``elastic_px`` native px·z) and the frame
   first blurred by σ = 0.5·(z − 1) (anti-aliasing);
3. intensity: contrast about the mean, gamma, Gaussian noise, blur — alike for input and target;
4. a lesion-shaped hole (``generator.masks.random_lesion_mask``) of radius ``size / (2·context)``,
   ``context`` uniform in ``context``: the hole spans ≈ 1/context of the window, as the predictor's
   window rule makes it at inference; placed on tissue.
The sample is self-supervised (the target is the window itself, the hole hides it; ``visible`` 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from generator.masks import place_mask, random_lesion_mask
from shared.benchmark.sources import SOURCES, TRAIN, check_training_sources, frames

# --------------------------------------------------------------------------------------------
# Window draws


@dataclass(frozen=True)
class WindowConfig:
    sources: tuple[str, ...] = TRAIN  # training sources (never a HELD_OUT one)
    size: int = 64  # output window side, model pixels
    zoom: tuple[float, float] = (1.0, 4.0)  # native px per model px, log-uniform
    context: tuple[float, float] = (2.5, 6.0)  # window side / hole diameter
    rotate: bool = True  # uniform angle (else multiples of 90°)
    elastic_p: float = 0.5  # share of draws with an elastic deformation
    elastic_px: float = 2.0  # its displacement amplitude, model px
    elastic_sigma: float = 8.0  # its smoothness, model px
    contrast: tuple[float, float] = (0.6, 1.3)  # x → m + c·(x − m)
    gamma: tuple[float, float] = (0.7, 1.4)
    noise_p: float = 0.3  # share of draws with added Gaussian noise
    noise_std: tuple[float, float] = (0.005, 0.03)
    blur_p: float = 0.2  # share of draws blurred (after the resampling)
    blur_sigma: tuple[float, float] = (0.4, 1.0)
    min_tissue: float = 0.3  # a window must be at least this share tissue (else redrawn, 8 tries)
    min_std: float = 0.02  # ... and not flat (a saturated or empty patch teaches nothing)


def draw_window(
    image: np.ndarray, tissue: np.ndarray, cfg: WindowConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One resampled window ``(pixels, tissue)`` of a native frame, (size, size) each (docstring)."""
    s = cfg.size
    h, w = image.shape
    z = float(np.exp(rng.uniform(*np.log(cfg.zoom))))
    z = min(z, 0.9 * min(h, w) / s)  # a frame smaller than the window at this zoom: zoom less
    theta = rng.uniform(0, 2 * np.pi) if cfg.rotate else int(rng.integers(4)) * np.pi / 2
    ys, xs = np.nonzero(tissue)
    src = ndimage.gaussian_filter(image, 0.5 * (z - 1)) if z > 1.2 else image
    u = np.arange(s, dtype=np.float32) - (s - 1) / 2
    vy, vx = np.meshgrid(u, u, indexing="ij")
    c, si = np.cos(theta), np.sin(theta)
    dy, dx = z * (c * vy - si * vx), z * (si * vy + c * vx)
    if rng.random() < cfg.elastic_p:
        field = rng.standard_normal((2, s, s)).astype(np.float32)
        field = np.stack([ndimage.gaussian_filter(f, cfg.elastic_sigma) for f in field])
        field *= cfg.elastic_px * z / (np.abs(field).max() + 1e-8)
        dy, dx = dy + field[0], dx + field[1]
    best, best_score = None, -1.0
    for _ in range(8):  # redraw the centre until the window is mostly tissue and not flat
        k = int(rng.integers(ys.size)) if ys.size else None
        cy, cx = (ys[k], xs[k]) if k is not None else (h / 2, w / 2)
        coords = np.stack([cy + dy, cx + dx])
        t = ndimage.map_coordinates(tissue.astype(np.float32), coords, order=0, mode="constant") > 0.5
        pixels = ndimage.map_coordinates(src, coords, order=1, mode="reflect").astype(np.float32)
        score = min(t.mean() / max(cfg.min_tissue, 1e-6), float(pixels.std()) / max(cfg.min_std, 1e-6), 1.0)
        if score > best_score:
            best, best_score = (np.clip(pixels, 0.0, 1.0), t), score
        if score >= 1.0:
            break
    return best


def photometric(x: np.ndarray, cfg: WindowConfig, rng: np.random.Generator) -> np.ndarray:
    """Contrast about the mean, gamma, then (sometimes) Gaussian noise and blur, clipped to [0, 1]."""
    m = float(x.mean())
    x = np.clip(m + rng.uniform(*cfg.contrast) * (x - m), 0.0, 1.0) ** rng.uniform(*cfg.gamma)
    if rng.random() < cfg.noise_p:
        x = x + rng.normal(0.0, rng.uniform(*cfg.noise_std), x.shape)
    if rng.random() < cfg.blur_p:
        x = ndimage.gaussian_filter(x, rng.uniform(*cfg.blur_sigma))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def window_hole(tissue: np.ndarray, cfg: WindowConfig, rng: np.random.Generator) -> np.ndarray:
    """A lesion-shaped hole spanning ≈ 1/context of the window, centred on tissue if it fits."""
    s = cfg.size
    r = s / (2 * rng.uniform(*cfg.context))
    template = random_lesion_mask((s, s), rng, min_radius=0.8 * r, max_radius=1.2 * r)
    placed = place_mask(template, np.zeros((s, s), bool), tissue, rng)
    return placed if placed is not None else template


class WindowDataset(torch.utils.data.Dataset):
    """Endless self-supervised window draws over ``cfg.sources`` (uniform over sources).

    Items are ``ReferenceDataset``-shaped: ``image``, ``hole``, ``target``, ``weight`` (1, S, S)
    and ``visible`` (1, 1, 1) = 0. ``length`` only sets the epoch size of a DataLoader.
    """

    def __init__(self, cfg: WindowConfig, *, hole_weight: float = 1.0, context_weight: float = 0.05,
                 seed: int = 0, length: int = 10_000):
        check_training_sources(tuple(cfg.sources))
        self.cfg = cfg
        self.hole_weight, self.context_weight = hole_weight, context_weight
        self.rng = np.random.default_rng(seed)
        self.length = length
        self.frames = {n: frames(n) for n in cfg.sources}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng = self.rng
        name = self.cfg.sources[int(rng.integers(len(self.cfg.sources)))]
        pool = self.frames[name]
        image, tissue = pool[int(rng.integers(len(pool)))]
        pixels, t = draw_window(image, tissue, self.cfg, rng)
        pixels = photometric(pixels, self.cfg, rng)
        hole = window_hole(t, self.cfg, rng)
        weight = np.where(hole, self.hole_weight, self.context_weight).astype(np.float32)
        as_t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
                for a in (pixels, hole, pixels, weight)]
        return {"image": as_t[0], "hole": as_t[1], "target": as_t[2], "weight": as_t[3],
                "visible": torch.zeros((1, 1, 1))}


class BenchmarkWindows(torch.utils.data.Dataset):
    """A ``generator.data.ReferenceDataset`` seen through the predictor's window rule.

    Each item's hole gets the inference window (:func:`generator.predictor.lesion_window`, context
    drawn from ``cfg.context``; the whole image when the window would not be smaller), resized to
    ``cfg.size``² — what the model sees of a benchmark image at inference. Keeps the benchmark's
    supervised pairs (positive → its exact lesion-free twin) in a window-trained model's diet.
    """

    def __init__(self, base: torch.utils.data.Dataset, cfg: WindowConfig, *, seed: int = 0):
        self.base, self.cfg = base, cfg
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        import torch.nn.functional as F

        from generator.predictor import lesion_window

        item = self.base[idx]
        s = self.cfg.size
        win = lesion_window(item["hole"][0].numpy() > 0, min_side=s,
                            context=float(self.rng.uniform(*self.cfg.context)))
        out = dict(item)
        for key in ("image", "hole", "target", "weight"):
            x = item[key]
            if win is not None:
                top, left, n = win
                x = x[:, top : top + n, left : left + n]
            if x.shape[-1] != s:
                if key == "hole":
                    x = F.adaptive_max_pool2d(x[None], s)[0]
                else:
                    x = F.interpolate(x[None], size=(s, s), mode="bilinear", antialias=True)[0]
            out[key] = x.contiguous()
        return out


class Mixed(torch.utils.data.Dataset):
    """Draw from ``first`` with probability ``p_first``, else from ``second`` (random items)."""

    def __init__(self, first, second, p_first: float, *, seed: int = 0, length: int = 10_000):
        self.first, self.second, self.p = first, second, p_first
        self.rng = np.random.default_rng(seed)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        ds = self.first if self.rng.random() < self.p else self.second
        return ds[int(self.rng.integers(len(ds)))]


__all__ = ["BenchmarkWindows", "Mixed", "SOURCES", "WindowConfig", "WindowDataset", "draw_window",
           "photometric", "window_hole"]
