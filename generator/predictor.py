"""The generator's inference API: positive image + tumor mask → tumor-free negatives.

``NegativeGenerator.generate`` is the one entry point the API service and the trainer use. A
backend only fills holes at its own resolution; this class owns everything around it: input
checks, dilation (a radius in pixels), grayscale/RGB and size handling, per-sample seeds, and the
exact paste-back outside the dilated mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from generator.compose import (
    hole_to_grid,
    native_base,
    residual_on_native_coarse,
    texture_on_native_coarse,
    to_grid,
    upsample,
)
from generator.kriging import PRIORS, prior_fill
from generator.masks import coarse_fill, dilate, paste_back
from shared.io import InputError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights for RGB → gray
# biharmonic / kriging / stacked: the classical fills (generator.kriging.prior_fill: scikit-image's
# baseline, the ring check's one best, its ring-fitted mix); latent-boundary: a classifier-boundary
# step in a small VAE's latent (generator.latent_boundary), needs its weights
METHODS = ("diffusion", *PRIORS, "latent-boundary")


class GenerationInputError(InputError):
    """A request the generator cannot serve (shapes, ranges, parameters); the message says why."""


class NoContextError(GenerationInputError):
    """The dilated mask covers the whole image: no tissue is left to fill the hole from."""


def no_context_message(dilation_px: int) -> str:
    return (f"the mask dilated by {dilation_px} px covers the whole image: no surrounding tissue is "
            "left to fill the lesion from (use a smaller mask or dilation_px)")


@dataclass(frozen=True)
class NegativeResult:
    image: np.ndarray  # float32 [0,1], same shape as the input image (HxW or HxWx3)
    seed: int  # the seed that produced this sample
    method: str  # "diffusion" | "biharmonic" | ...
    scores: dict[str, float] = field(default_factory=dict)  # optional quality scores


class FillBackend(Protocol):
    """Fills holes at a fixed square resolution. Rows are independent (one generator each)."""

    name: str  # registry name: "pixel" | "sd-inpaint"
    resolution: int  # square side the backend runs at
    channels: int  # 1 (grayscale model) or 3 (RGB model)
    max_side: int  # largest grid a lesion window is filled on at its own scale (== resolution: fixed size)

    def fill(
        self,
        images: torch.Tensor,  # (B, channels, R, R) in [0,1]
        holes: torch.Tensor,  # (B, 1, R, R) 1 = fill
        generators: Sequence[torch.Generator],
        *,
        steps: int,
        strength: float,
        see_through_px: float = 0.0,  # > 0: keep the input's high-pass in the hole (pixel only)
    ) -> np.ndarray: ...  # (B, R, R, channels) float32 in [0,1]


def _check_pair(i: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise GenerationInputError(f"image {i} has shape {image.shape}; expected HxW or HxWx3")
    if not np.issubdtype(image.dtype, np.floating):
        raise GenerationInputError(f"image {i} has dtype {image.dtype}; expected float in [0,1]")
    if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
        raise GenerationInputError(f"image {i} has values outside [0,1] (or NaN)")
    if mask.shape != image.shape[:2]:
        raise GenerationInputError(
            f"mask {i} is {mask.shape[1]}x{mask.shape[0]} but image is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise GenerationInputError(f"mask {i} is not binary (expected bool or 0/1 values)")
        mask = mask.astype(bool)
    return image.astype(np.float32, copy=False), mask


WINDOWS = ("whole", "lesion")


def lesion_window(region: np.ndarray, *, min_side: int, context: float) -> tuple[int, int, int] | None:
    """The square window ``(top, left, side)`` the backend fills for one dilated lesion.

    Rule: ``side = max(min_side, ceil(context · s))`` with ``s`` the longer side of the region's
    bounding box (so the lesion spans about 1/context of the window, as holes span the windows the
    model trains on), centred on the box and shifted to lie inside the image. None when that window
    would not be smaller than the image's short side: the whole image is filled then.
    """
    ys, xs = np.nonzero(region)
    h, w = region.shape
    if ys.size == 0:
        return None
    s = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    side = max(int(min_side), int(np.ceil(context * s)))
    if side >= min(h, w):
        return None
    cy, cx = (ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return top, left, side


def grid_side(n: int, *, resolution: int, max_side: int) -> int:
    """The side of the square grid a view of ``n`` input pixels is filled on (window mode).

    ``n ≤ resolution``: the backend's own grid (a small view is upsampled, as before);
    ``resolution < n``: the view's own size rounded up to a multiple of 8 (the UNet halves it three
    times), at most ``max_side`` — so the zoom ``n / side`` is 1 (up to rounding) until the view
    outgrows ``max_side``, and ``n / max_side`` beyond it. A backend with a fixed size (SD) has
    ``max_side == resolution``.
    """
    if n <= resolution:
        return resolution
    return max(resolution, min(int(max_side), 8 * int(np.ceil(n / 8))))


class NegativeGenerator:
    """Batched pos→neg generation over a hole-filling backend.

    checkpoint_hash: sha256 over the backend's weights and config (provenance, cache keys).
    window: what the diffusion backend sees of each image —
    - ``"whole"``: the whole image resized to the backend's grid (``resolution``²);
    - ``"lesion"``: a square window of ``window_context`` × the dilated lesion's bounding box, at
      least ``resolution`` pixels (:func:`lesion_window`; the whole image when the window would not
      be smaller), filled on a grid of its own size (:func:`grid_side`): at the input's own pixel
      scale up to ``backend.max_side`` (128 for the embedded conv-only model), zoomed out by
      ``side / max_side`` beyond it. The embedded model trains on windows at 1–4 input pixels per
      model pixel (``generator.windows``), so the zoom is within training up to a 512-pixel window
      (a 128-pixel lesion at context 4); larger lesions are filled coarser still (no tiling).
      With ``native_coarse`` a zoomed-out window's fill is composed at the input's resolution:
      exact biharmonic fill of the window + the upsampled learned residual (fill − coarse channel).
    texture_match (grayscale inputs, pixel backend, no see-through): every window's fill is
      composed at the input's resolution from the exact biharmonic fill (its low frequencies)
      and only the *high-pass* (σ = 1 input px) of the learned residual, scaled so the fill is as
      textured as the tissue ring around the hole (:func:`generator.masks.ring_texture_gain`):
      the learned model supplies texture, not the coarse structure it gets wrong on unseen anatomy.
    texture_lowcut_sigma (with texture_match; 0 = off): also remove the texture's band under a
      σ-blur of this many px (:func:`generator.compose.remove_low_band`; fidelity for realism).
    coarse_prior: the classical fill both compositions above put the learned part on —
      ``"biharmonic"`` (scikit-image's exact solve) or ``"kriging"`` (per image, linear-variogram
      kriging from the hole's wider context or biharmonic, whichever predicts a hidden ring of
      known tissue better: :func:`generator.kriging.stationary_fill`) or ``"stacked"`` (those
      candidates' convex combination fitted on that ring: :func:`generator.kriging.stacked_fill`).
    The fill is pasted back exactly either way: outside the dilated mask the output is the input.
    """

    def __init__(self, backend: FillBackend, *, checkpoint_hash: str, batch_size: int = 1,
                 window: str = "whole", window_context: float = 4.0, native_coarse: bool = False,
                 texture_match: bool = False, coarse_prior: str = "biharmonic",
                 texture_lowcut_sigma: float = 0.0):
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        if window_context < 1:
            raise ValueError(f"window_context must be >= 1, got {window_context}")
        self.window = window
        self.window_context = window_context
        # where a view was zoomed out onto the grid, put the model's learned residual (fill − its
        # coarse channel, upsampled) on an exact biharmonic fill at the input's own resolution
        # instead of upsampling the whole fill (grayscale pixel backend; the committed default
        # does, per its checkpoint: generator.build.checkpoint_native_coarse)
        self.native_coarse = native_coarse
        self.texture_match = texture_match
        if not texture_lowcut_sigma >= 0:  # also NaN
            raise ValueError(f"texture_lowcut_sigma must be >= 0, got {texture_lowcut_sigma}")
        self.texture_lowcut_sigma = float(texture_lowcut_sigma)
        if coarse_prior not in PRIORS:
            raise ValueError(f"coarse_prior must be one of {PRIORS}, got {coarse_prior!r}")
        self.coarse_prior = coarse_prior
        self.backend = backend
        self.checkpoint_hash = checkpoint_hash
        # Rows (image × sample) per backend call. 1 makes every result independent of what it was
        # batched with (bit-exact; content-addressed stores rely on it); >1 is faster on a GPU but
        # convolution numerics then vary ~1e-6 with the batch composition.
        self.batch_size = batch_size

    def generate(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        num_samples: int = 1,
        seed: int | Sequence[int] = 0,
        steps: int = 20,
        strength: float = 1.0,
        dilation_px: int = 2,
        method: str = "diffusion",
        see_through_px: float = 0.0,
    ) -> list[list[NegativeResult]]:
        """Remove the masked lesion from each image; returns results indexed [image][sample].

        images: float32 HxW or HxWx3 in [0,1], any size; masks: bool HxW (lesion = True).
        Sample k of every image uses seed ``seed + k`` whatever the batch, so results are
        reproducible per (image, mask, seed); ``seed`` may also be one seed per image (image i,
        sample k: ``seed[i] + k``), so requests that differ only in seed share one batch.
        Outside ``dilate(mask, dilation_px)`` every output pixel equals the input exactly.

        ``see_through_px`` σ > 0 (diffusion, pixel backend): for projection radiographs, where a
        lesion adds density on top of anatomy that stays visible, the fill keeps the input's own
        high-pass (σ in pixels at the backend's resolution; finer structure of a larger input is
        kept as it is), is nowhere brighter than the input, and the model supplies the low
        frequencies (``generator.modeling.pixel_unet``). Leave 0 where lesions replace tissue (MRI,
        ultrasound, fundus): there the high-pass is the lesion's texture.
        """
        if len(images) != len(masks):
            raise GenerationInputError(f"{len(images)} images but {len(masks)} masks")
        if num_samples < 1:
            raise GenerationInputError(f"num_samples must be >= 1, got {num_samples}")
        if steps < 1:
            raise GenerationInputError(f"steps must be >= 1, got {steps}")
        if not 0.0 < strength <= 1.0:
            raise GenerationInputError(f"strength must be in (0, 1], got {strength}")
        if dilation_px < 0:
            raise GenerationInputError(f"dilation_px must be >= 0, got {dilation_px}")
        if method not in METHODS:
            raise GenerationInputError(f"unknown method {method!r}; expected one of {METHODS}")
        if not (np.isfinite(see_through_px) and see_through_px >= 0):
            raise GenerationInputError(f"see_through_px must be a finite number >= 0, got {see_through_px}")
        if see_through_px > 0:
            backend = getattr(self.backend, "name", None)
            if method != "diffusion" or backend != "pixel":
                raise GenerationInputError(
                    f"see_through_px needs method 'diffusion' on the pixel backend "
                    f"(got method {method!r}, backend {backend!r})")
            if 3 * see_through_px >= self.backend.resolution:
                raise GenerationInputError(
                    f"see_through_px={see_through_px} is too wide for the model's "
                    f"{self.backend.resolution}-pixel grid (must be < {self.backend.resolution / 3:g})")
        pairs = [_check_pair(i, im, m) for i, (im, m) in enumerate(zip(images, masks, strict=True))]
        seeds = ([int(seed)] * len(pairs) if isinstance(seed, int | np.integer)
                 else [int(s) for s in seed])
        if len(seeds) != len(pairs):
            raise GenerationInputError(f"{len(seeds)} seeds for {len(pairs)} images")
        regions = [dilate(m, dilation_px) for _, m in pairs]
        for i, region in enumerate(regions):
            if region.all():
                raise NoContextError(f"image {i}: {no_context_message(dilation_px)}")
        fills: list[list[np.ndarray | None]] = [[None] * num_samples for _ in pairs]
        if method in PRIORS:
            for i, ((image, _), region) in enumerate(zip(pairs, regions, strict=True)):
                fills[i] = [_classical(image, region, method)] * num_samples
        elif method == "latent-boundary":  # one call per distinct seed (its noise is per call)
            for s in sorted(set(seeds)):
                idx = [i for i, si in enumerate(seeds) if si == s]
                part = _latent_boundary_fills([pairs[i] for i in idx], num_samples, seed=s,
                                              dilation_px=dilation_px)
                for i, f in zip(idx, part, strict=True):
                    fills[i] = f
        else:
            rows = [(i, k) for i in range(len(pairs)) for k in range(num_samples)]
            rows = [(i, k) for i, k in rows if regions[i].any()]
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                out = self._fill_rows(pairs, regions, chunk, seeds=seeds, steps=steps,
                                      strength=strength, see_through_px=see_through_px)
                for (i, k), fill in zip(chunk, out, strict=True):
                    fills[i][k] = fill
        results = []
        for i, ((image, _), region) in enumerate(zip(pairs, regions, strict=True)):
            per_image = []
            for k in range(num_samples):
                fill = fills[i][k]
                out = image.copy() if fill is None else paste_back(image, fill, region)
                per_image.append(NegativeResult(image=out, seed=seeds[i] + k, method=method))
            results.append(per_image)
        return results

    def _fill_rows(self, pairs, regions, rows, *, seeds, steps, strength, see_through_px) -> list[np.ndarray]:
        res, channels = self.backend.resolution, self.backend.channels
        max_side = getattr(self.backend, "max_side", res)
        views = []  # (image, region, window, grid side) per row
        for i, _ in rows:
            image, region, win, side = pairs[i][0], regions[i], None, res
            if self.window == "lesion":
                win = lesion_window(region, min_side=res, context=self.window_context)
                if win is not None:
                    top, left, n = win
                    image = image[top : top + n, left : left + n]
                    region = region[top : top + n, left : left + n]
                side = grid_side(max(image.shape[:2]), resolution=res, max_side=max_side)
            views.append((image, region, win, side))
        filled: list[np.ndarray | None] = [None] * len(rows)
        for side in sorted({v[3] for v in views}):  # one backend call per grid size
            idx = [j for j, v in enumerate(views) if v[3] == side]
            batch_img, batch_hole, gens = [], [], []
            for j in idx:
                image, region = views[j][0], views[j][1]
                if channels == 1:
                    model_in = image if image.ndim == 2 else image @ LUMA
                else:
                    model_in = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
                batch_img.append(to_grid(model_in, side))
                batch_hole.append(hole_to_grid(region, side))
                i, k = rows[j]
                gens.append(torch.Generator().manual_seed(seeds[i] + k))
            out = self.backend.fill(
                torch.stack(batch_img), torch.stack(batch_hole), gens, steps=steps,
                strength=strength, see_through_px=see_through_px,
            )
            for j, f in zip(idx, out, strict=True):
                filled[j] = f
        out, bases = [], {}  # bases: image index -> native_base, shared by its samples
        for (i, _), (image, region, win, side), f in zip(rows, views, filled, strict=True):
            native = hasattr(self.backend, "coarse") and image.ndim == 2 and see_through_px == 0
            texture = native and self.texture_match
            if texture or (native and self.native_coarse and f.shape[0] != max(image.shape)):
                if i not in bases:
                    bases[i] = native_base(self.backend, image, region, side, self.coarse_prior)
                f = (texture_on_native_coarse(bases[i], image, region, f,
                                              self.texture_lowcut_sigma) if texture
                     else residual_on_native_coarse(bases[i], image, f))
            fill = self._to_input_space(image, region, f, see_through=see_through_px > 0)
            if win is not None:  # the window's fill inside a copy of the whole image
                top, left, n = win
                full = pairs[i][0].copy()
                full[top : top + n, left : left + n] = fill
                fill = full
            out.append(fill)
        return out

    def _to_input_space(
        self, image: np.ndarray, region: np.ndarray, fill: np.ndarray, *, see_through: bool = False
    ) -> np.ndarray:
        """Backend output (R,R,C) → the input's size and channel layout.

        ``see_through`` (grayscale backend): the input's structure finer than the backend's grid,
        which the model never saw, is added back, so the fill keeps the anatomy at full resolution;
        it stays at or below the input (``fill ≤ input`` at the model's grid carries over).
        """
        up = upsample(fill, image.shape[:2])
        if see_through and up.shape[2] == 1 and fill.shape[:2] != image.shape[:2]:
            gray = image if image.ndim == 2 else image @ LUMA
            side = fill.shape[0]
            seen = upsample(to_grid(gray, side).permute(1, 2, 0).numpy(), image.shape[:2])[..., 0]
            up = np.minimum(up[..., 0] + (gray - seen), gray)[..., None]  # min: float round-off only
        if image.ndim == 2:
            return up.mean(axis=2) if up.shape[2] == 3 else up[..., 0]
        if up.shape[2] == 3:
            return up
        # Grayscale model on an RGB input: the model fills luminance; each channel's offset from
        # luminance is filled smoothly from the surroundings (tissue colour varies slowly).
        chroma = torch.from_numpy(image - (image @ LUMA)[..., None]).permute(2, 0, 1)[None]
        hole = torch.from_numpy(region.astype(np.float32))[None, None]
        chroma = coarse_fill(chroma, hole)[0].permute(1, 2, 0).numpy()
        return np.clip(up + chroma, 0.0, 1.0).astype(np.float32)


def _classical(image: np.ndarray, region: np.ndarray, method: str) -> np.ndarray:
    """The classical method's fill (``generator.kriging.prior_fill``), clipped to [0, 1], float32."""
    return np.clip(prior_fill(image, region, method), 0, 1).astype(np.float32)


def _latent_boundary_fills(
    pairs: list[tuple[np.ndarray, np.ndarray]], num_samples: int, *, seed: int, dilation_px: int
) -> list[list[np.ndarray]]:
    """Latent-boundary fills [image][sample]; grayscale via LUMA, RGB gets the gray change added.

    Sample k uses seed ``seed + k``. Raises GenerationInputError when no latent weights exist.
    """
    from generator.latent_boundary import LATENT_DIR, generate_latent_boundary, load_latent

    try:
        models = load_latent(LATENT_DIR)
    except FileNotFoundError as e:
        raise GenerationInputError(
            f"method 'latent-boundary' needs the latent VAE + classifier weights under "
            f"{LATENT_DIR} (missing: {e}); train them with python -m generator.latent_boundary"
        ) from e
    grays = [image if image.ndim == 2 else image @ LUMA for image, _ in pairs]
    masks = [m for _, m in pairs]
    fills: list[list[np.ndarray]] = [[] for _ in pairs]
    for k in range(num_samples):
        outs = generate_latent_boundary(grays, masks, seed=seed + k, dilation_px=dilation_px,
                                        models=models)
        for i, ((image, _), gray, out) in enumerate(zip(pairs, grays, outs, strict=True)):
            if image.ndim == 2:
                fills[i].append(out)
            else:
                fills[i].append(np.clip(image + (out - gray)[..., None], 0.0, 1.0).astype(np.float32))
    return fills
