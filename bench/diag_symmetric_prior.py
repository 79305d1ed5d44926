"""Does a contralateral (mirror) prior fill lesions better than biharmonic? (issue 18; validation
sources only; a diagnostic, not adopted)

Brain, head, thorax and pelvis imaged axially, coronally or frontally are close to mirror
symmetric about the body's midline, so the tissue a unilateral lesion displaced has a healthy twin
on the other side. Biharmonic inpainting only interpolates the hole's boundary; a ventricle or
sulcus running through a 5 % lesion is not on its rim. The prior measured here is the classical one
radiologists use by eye:

1. :func:`mirror_axis` — the reflection line (angle θ from the image's vertical, a point on it)
   that maximises the Pearson correlation between the image and its reflection over pixel pairs
   that are both known (outside the hole, inside the image); searched coarse-to-fine on ≤ 96- and
   ≤ 192-pixel copies.
2. :func:`mirror_fill` — the reflected image, its offset from the input corrected by a biharmonic
   fill of the mismatch ``d = image − reflected`` across the hole (gradient-domain cloning, Pérez
   et al., SIGGRAPH 2003, with scikit-image's biharmonic solve as the membrane): the fill meets the
   rim like biharmonic and carries the twin's structure and texture inside.
3. :func:`symmetric_prior` — ``biharmonic + α · (mirror − biharmonic)`` with α ∈ [0, 1] the
   least-squares weight that best predicts a ring of *known* tissue around the hole when the ring
   is hidden too (both fills recomputed on the hole dilated by the ring). Where the anatomy is not
   bilateral (a limb, an ultrasound pane, a crop without its midline) the mirror predicts the ring
   badly and α → 0, i.e. plain biharmonic. Nothing is learned or tuned per dataset.

Measured on the generator's *training* sources only (``shared.benchmark.sources.TRAIN``: other
crops and lesions than any table's, seed 1), never on the held-out test sources: the same
``shared.benchmark.realsize`` items and region (lesion dilated by 2 px) and the same metrics as
``bench_generator_realsize.py`` (PSNR and low-frequency PSNR inside the region vs the exact
lesion-free image), paired bootstrap CIs against biharmonic; rows: the prior and the mirror alone
(α = 1: the mirror fill wherever the image has a usable line and the hole a twin, else biharmonic).

    python bench/diag_symmetric_prior.py --sizes 256 512 --n 15 --out bench/results/symmetric_prior.md
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.restoration import inpaint_biharmonic  # noqa: E402
from skimage.transform import resize  # noqa: E402

from bench.bench_generator_realsize import low, psnr  # noqa: E402
from bench.diag_sources import ci, command, parse, parser, run  # noqa: E402
from generator.kriging import ring_px  # noqa: E402
from generator.masks import dilate  # noqa: E402
from shared.benchmark.realsize import build_realsize  # noqa: E402

COARSE_SIDE, FINE_SIDE = 96, 192  # axis search grids (longer side, px)
ANGLES_DEG = np.arange(-12.0, 12.1, 2.0)  # coarse search; the fine pass refines ±2° in 0.5° steps
MIN_OVERLAP = 0.2  # a candidate axis needs known pairs on ≥ 20 % of the search grid
MIN_VALID_SHARE = 0.5  # the mirror fills a hole only if ≥ half its pixels have a known twin


@dataclass(frozen=True)
class MirrorAxis:
    """Reflection line through ``point`` (row, col; input pixels) at ``angle_deg`` from vertical
    (positive = the line's lower end leans towards larger columns); ``score`` = the Pearson
    correlation of image and reflection over known pairs at the fine grid."""

    angle_deg: float
    point: tuple[float, float]
    score: float

    def reflect(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mirror images of pixel coordinates: ``p' = a + 2 ((p − a)·u) u − (p − a)``, u the
        line's unit direction (cos θ, sin θ) in (row, col)."""
        t = np.deg2rad(self.angle_deg)
        uy, ux = np.cos(t), np.sin(t)
        dy, dx = rows - self.point[0], cols - self.point[1]
        dot = dy * uy + dx * ux
        return self.point[0] + 2 * dot * uy - dy, self.point[1] + 2 * dot * ux - dx


def _score_grid(img: np.ndarray, known: np.ndarray, angles, cols) -> tuple[float, float, float]:
    """Best (score, angle, col) over candidate vertical-ish lines through the grid's middle row,
    nearest-neighbour reflection; -inf when no candidate has enough known pairs."""
    h, w = img.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    best = (-np.inf, 0.0, w / 2)
    for angle in angles:
        for col in cols:
            ry, rx = MirrorAxis(float(angle), ((h - 1) / 2, float(col)), 0.0).reflect(rr, cc)
            ry, rx = np.rint(ry).astype(np.int64), np.rint(rx).astype(np.int64)
            inside = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
            ok = inside & known
            ok[inside] &= known[ry[inside], rx[inside]]
            if ok.sum() < MIN_OVERLAP * h * w:
                continue
            a, b = img[ok], img[ry[ok], rx[ok]]
            sa, sb = a.std(), b.std()
            if sa == 0 or sb == 0:
                continue
            r = float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))
            if r > best[0]:
                best = (r, float(angle), float(col))
    return best


def mirror_axis(image: np.ndarray, known: np.ndarray) -> MirrorAxis | None:
    """The image's best mirror line (module docstring, step 1), or None when no candidate line
    leaves enough known pixel pairs (e.g. a hole covering most of the image)."""
    h, w = image.shape
    found = None
    for side, stage in ((COARSE_SIDE, "coarse"), (FINE_SIDE, "fine")):
        f = min(1.0, side / max(h, w))  # grid pixels per input pixel
        gh, gw = max(8, round(h * f)), max(8, round(w * f))
        img = resize(image.astype(np.float64), (gh, gw), order=1, anti_aliasing=f < 1)
        kn = resize(known.astype(np.float64), (gh, gw), order=1, anti_aliasing=False) > 0.999
        if stage == "coarse":
            angles, cols = ANGLES_DEG, np.arange(0.2 * gw, 0.8 * gw + 1e-9, 0.5)
        else:
            angle0, col0 = found
            col0 = (col0 + 0.5) * gw / w - 0.5  # input px → this grid
            angles, cols = angle0 + np.arange(-2.0, 2.01, 0.5), col0 + np.arange(-2.0, 2.01, 0.25)
        score, angle, col = _score_grid(img, kn, angles, cols)
        if not np.isfinite(score):
            return None
        found = (angle, (col + 0.5) * w / gw - 0.5)  # grid → input px
    return MirrorAxis(found[0], ((h - 1) / 2, found[1]), score)


def mirror_fill(image: np.ndarray, region: np.ndarray, axis: MirrorAxis,
                base: np.ndarray) -> np.ndarray | None:
    """The reflected image with its mismatch to the input filled biharmonically across the hole
    (module docstring, step 2), inside ``region``; pixels whose twin is unknown (in the hole or off
    the image) take ``base`` there. None when under ``MIN_VALID_SHARE`` of the hole has a twin.
    Outside ``region`` the result is the input."""
    h, w = image.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    ry, rx = axis.reflect(rr, cc)
    mirrored = ndimage.map_coordinates(image.astype(np.float64), [ry, rx], order=1, mode="nearest")
    iy, ix = np.rint(ry).astype(np.int64), np.rint(rx).astype(np.int64)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    twin = inside.copy()
    twin[inside] = ~ndimage.binary_dilation(region, iterations=1)[iy[inside], ix[inside]]
    if (twin & region).sum() < MIN_VALID_SHARE * region.sum():
        return None
    # the mismatch is known where the pixel is outside the hole and has a known twin; solve for it
    # on the hole's bounding box plus a margin (the biharmonic solve is local to each hole)
    ys, xs = np.nonzero(region)
    pad = max(8, int(np.ptp(ys) + np.ptp(xs)) // 4)
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    box = (slice(y0, y1), slice(x0, x1))
    unknown = (region | ~twin)[box]
    if unknown.all():
        return None
    d = np.where(unknown, 0.0, (image - mirrored)[box])
    d = inpaint_biharmonic(d, unknown)
    out = image.astype(np.float64).copy()
    fill = np.where(twin[box], mirrored[box] + d, base[box])
    out[box] = np.where(region[box], fill, out[box])
    return out


def symmetric_prior(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(fill, α, mirror)``: ``fill = biharmonic + α (mirror − biharmonic)`` inside ``region``, the
    input outside
    (module docstring, step 3). α = clip(⟨e, m⟩ / ⟨m, m⟩, 0, 1) over the ring ``R``
    (:func:`ring_px`) around the hole, where on the hole ∪ R hidden together ``m`` = mirror fill −
    biharmonic fill and ``e`` = image − biharmonic fill (the least-squares blend weight); α = 0
    when the image has no usable mirror line or the ring's twin is unknown (``mirror`` is then
    the biharmonic fill: the mirror fill (step 2) falls back to it)."""
    region = np.asarray(region, bool)
    image = image.astype(np.float64)
    if not region.any():
        return image.copy(), 0.0, image.copy()
    base = inpaint_biharmonic(image, region)
    axis = mirror_axis(image, ~region)
    if axis is None:
        return base, 0.0, base
    mirror = mirror_fill(image, region, axis, base)
    if mirror is None:
        return base, 0.0, base
    wide = ndimage.binary_dilation(region, iterations=ring_px(region))
    ring = wide & ~region
    wide_base = inpaint_biharmonic(image, wide)
    wide_mirror = mirror_fill(image, wide, axis, wide_base)
    if wide_mirror is None:
        return base, 0.0, mirror
    m, e = (wide_mirror - wide_base)[ring], (image - wide_base)[ring]
    mm = float(np.dot(m, m))
    alpha = float(np.clip(np.dot(e, m) / mm, 0.0, 1.0)) if mm > 0 else 0.0
    return base + alpha * (mirror - base), alpha, mirror


# ----------------------------------------------------------------------------- measurement

ROWS = ("symmetric prior", "mirror alone (α = 1)")
DILATION_PX = 2  # the generator's default, as bench_generator_realsize


def measure(source: str, size: int, n: int, seed: int) -> dict:
    """Per item: Δ PSNR and Δ low-frequency PSNR of each row vs biharmonic, α, seconds."""
    out = {r: {"psnr": [], "low": []} for r in ROWS} | {"alpha": [], "s": [], "bh": []}
    for item in build_realsize(source, size, n, seed=seed):
        region, gt = dilate(item.mask, DILATION_PX), item.gt_negative
        t0 = time.perf_counter()
        fill, alpha, mirror = symmetric_prior(item.image, region)
        out["s"].append(time.perf_counter() - t0)
        base = inpaint_biharmonic(item.image.astype(np.float64), region)
        out["alpha"].append(alpha)
        out["bh"].append((psnr(base, gt, region), psnr(low(base), low(gt), region)))
        for row, x in zip(ROWS, (fill, mirror), strict=True):
            out[row]["psnr"].append(psnr(x, gt, region))
            out[row]["low"].append(psnr(low(x), low(gt), region))
    return out


def table(size: int, results: dict[str, dict]) -> list[str]:
    lines = [f"### {size}²", "",
             "| source | row | n | Δ PSNR dB [95 % CI] | Δ low PSNR dB [95 % CI] | worst Δ low | "
             "α mean | share α > 0 | s/img |", "|---|---|---|---|---|---|---|---|---|"]
    for source, res in results.items():
        bh = np.asarray(res["bh"])
        for row in ROWS:
            r = res[row]
            worst = float(np.min(np.asarray(r["low"]) - bh[:, 1]))
            alpha = np.asarray(res["alpha"])
            extra = (f"{alpha.mean():.2f} | {np.mean(alpha > 0):.2f} | {np.mean(res['s']):.2f}"
                     if row == ROWS[0] else "— | — | —")
            lines.append(f"| {source} | {row} | {len(bh)} | {ci(r['psnr'], bh[:, 0])} | "
                         f"{ci(r['low'], bh[:, 1])} | {worst:+.2f} | {extra} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    args = parse(p, argv)
    lines = ["## Contralateral (mirror) prior vs biharmonic, training sources (issue 18, diagnostic)", "",
             command("diag_symmetric_prior.py", argv),
             "", "The prior (module docstring of `bench/diag_symmetric_prior.py`): biharmonic + α ·"
             " (mirror fill − biharmonic), α fitted on a ring of known tissue around the hole;"
             " the mirror fill = the image reflected about its best mirror line, its mismatch to"
             " the input filled biharmonically across the hole. Items: `shared.benchmark.realsize`"
             f" (seed {args.seed}), region = lesion dilated by {DILATION_PX} px; Δ = row −"
             " biharmonic inside the region, paired bootstrap 95 % CI over images; low = both"
             " images blurred by σ = 2 px first.", ""]
    run(args, lines, lambda source, size: measure(source, size, args.n, args.seed),
        lambda size, results: table(size, results))


if __name__ == "__main__":
    main()
