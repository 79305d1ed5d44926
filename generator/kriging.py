"""The hole's coarse tissue as a stationary random field's best linear guess from its context
(issue 18): ordinary kriging with a power variogram, or biharmonic, whichever predicts a hidden
ring of known tissue better — or the mix of them that predicts it best.

Biharmonic inpainting (scikit-image's solve, the project's classical baseline) is the
conditional mean of a very smooth field: it uses only the two-pixel rim and carries the rim's
gradients into the hole. At lesion scale real anatomy is often rougher than that: measured on the
generator's training sources (``bench/results/kriging_prior.md``, ``_round2.md``), ordinary kriging
with the linear variogram γ(h) = h — the best linear unbiased predictor of a Brownian surface,
Matheron 1963 / Cressie 1993 §3.2, which flattens towards the context's level instead of
extrapolating gradients — beats biharmonic on the low frequencies on every source but the smooth,
symmetric MNI template, where biharmonic wins. The power family γ(h) = h^α (0 < α < 2; α → 2
smooth, α → 0 rough) spans the range between, and :func:`stationary_fill` lets each image choose
among biharmonic and α ∈ ``STATIONARY_ALPHAS``: every candidate is recomputed with a ring of known
tissue hidden too, and the one that predicts the ring's low frequencies (σ = 2 px blur, the band
issue 18 scores) best fills the hole.

Measured on fresh training-source items (never the held-out test sources): the two-way choice
(biharmonic or α = 1, session 20) gained +1.27 [+0.78, +1.73] dB low-frequency PSNR over biharmonic
pooled at 256², +1.15 [+0.73, +1.61] at 512² (``kriging_prior_round2.md``, seed 2); the four-way
choice adds +0.58 [+0.33, +0.85] / +0.53 [+0.18, +0.91] dB over the two-way one, no source's mean
below −0.24 (``kriging_prior_round3.md``, seed 4; a variogram-fitted α lost 1.6 dB on leg
radiographs at 512² and was not adopted).

``prior: stacked`` (:func:`stacked_fill`, the committed generator's since session 26) keeps the
same check but, instead of the one best candidate, fills with the convex combination of biharmonic
and α ∈ ``STACK_ALPHAS`` (the three above and 0.25) that best predicts the ring
(:func:`simplex_weights`; stacked regression, Breiman 1996): on fresh training-source items
(seed 10) +0.25 [+0.06, +0.46] dB low-frequency PSNR over the one-best choice pooled at 256²,
+0.35 [+0.14, +0.61] at 512², no source's mean below −0.04 (``kriging_prior_round5.md``).

Kriging here is solved in its dual form, ``[K 1; 1ᵀ 0] [w; c] = [z; 0]`` with the generalised
covariance K(r) = −r^α and a constant drift (the ordinary-kriging system's dual: the same
predictor as Cressie's eq. 3.2.12), fitted on the known pixels around the hole: every one within
``RIM_PX`` of it, and a grid of those out to the hole's equivalent radius, at most ``MAX_POINTS``
in all. Nothing is learned from other images.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.restoration import inpaint_biharmonic

MAX_POINTS = 2500  # known pixels one fit uses (a dense (N + 1)² solve)
RIM_PX = 2  # every known pixel this close to the hole is used (continuity at the rim)
RING_SIGMA = 2.0  # px: the low-frequency band the ring check compares (issue 18's metric)
PRIORS = ("biharmonic", "kriging", "stacked")  # kriging: stationary_fill's choice; stacked: stacked_fill
STATIONARY_ALPHAS = (0.5, 1.0, 1.5)  # the power variograms the ring check weighs against biharmonic
# Names the kriging prior's rule in a generator's hash (generator.build.load_generator): outputs
# change with it, so caches and content-addressed stores keyed on the hash must too. The candidate
# set enters by itself; bump the revision whenever the check itself changes.
KRIGING_RULE = f"ring-check rev 1: biharmonic, power α {'/'.join(f'{a:g}' for a in STATIONARY_ALPHAS)}"
# stacked_fill's power variograms: the ring check's and the rougher α = 0.25 (round 5,
# bench/results/kriging_prior_round5.md: without it the stack does not beat the one-best choice)
STACK_ALPHAS = (0.25, *STATIONARY_ALPHAS)
STACK_MIN_WEIGHT = 1e-3  # stacked_fill drops (and does not compute) candidates weighted below this
STACK_RULE = (f"stack rev 1: simplex weights on the ring, power α {'/'.join(f'{a:g}' for a in STACK_ALPHAS)},"
              f" min weight {STACK_MIN_WEIGHT:g}")
PHASE_MIN_SHARE = 0.1  # two-phase context: each phase holds at least this share of the context
PHASE_MIN_SEPARATION = 0.75  # ... and the phases explain at least this share of its variance
CHUNK = 4096  # hole pixels predicted per kernel block (bounds the (M, N) distance matrix)
# Holes larger than this (pixels) are checked on a copy shrunk to about this size: the choice is a
# coarse one, and both solves on hole + ring at full size cost tens of seconds for a 10⁵-pixel hole
# (the validation's holes, ≤ 13 000 px at 512², are checked at full size).
CHECK_PIXELS = 20_000


def context_reach(region: np.ndarray) -> float:
    """How far from ``region`` (px) a kriging fit takes known pixels: the hole's equivalent
    radius, at least 6 px (:func:`context_points`)."""
    return max(6.0, float(np.sqrt(np.count_nonzero(region) / np.pi)))


def context_points(region: np.ndarray) -> np.ndarray:
    """(N, 2) int row/col of the known pixels a fit uses: all within ``RIM_PX`` of ``region``, plus
    a grid of those out to the hole's equivalent radius (≥ 6 px), the grid's stride the smallest
    that keeps N ≤ ``MAX_POINTS`` (the rim itself thinned only for a hole too large for that)."""
    dist = ndimage.distance_transform_edt(~region)
    reach = context_reach(region)
    rim = np.argwhere((dist > 0) & (dist <= RIM_PX))
    if len(rim) > MAX_POINTS:
        rim = rim[:: int(np.ceil(len(rim) / MAX_POINTS))]
    band = np.argwhere((dist > RIM_PX) & (dist <= reach))
    room = MAX_POINTS - len(rim)
    stride = 1
    while room > 0 and len(band) and np.sum(np.all(band % stride == 0, axis=1)) > room:
        stride += 1
    grid = band[np.all(band % stride == 0, axis=1)] if room > 0 else band[:0]
    return np.concatenate([rim, grid])


def kriging_fill(image: np.ndarray, region: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) float with ``region`` (H, W) bool replaced by the
    ordinary-kriging prediction under the power variogram γ(h) = h^α, 0 < α < 2 (module
    docstring; α = 1: the linear variogram), float64; outside ``region`` the input. Needs at least
    one known pixel."""
    if not 0.0 < alpha < 2.0:
        raise ValueError(f"the power variogram needs 0 < alpha < 2, got {alpha}")
    region = np.asarray(region, bool)
    out = np.array(image, dtype=np.float64)
    if not region.any():
        return out
    if region.all():
        raise ValueError("kriging needs known pixels: the region covers the whole image")
    pts = context_points(region)
    out[region] = _krige(pts, out[pts[:, 0], pts[:, 1]], np.argwhere(region), alpha, max(region.shape))
    return out


def _krige(known: np.ndarray, z: np.ndarray, targets: np.ndarray, alpha: float, side: int) -> np.ndarray:
    """Ordinary kriging of ``z`` (N,) or (N, C) at ``known`` (N, 2) px onto ``targets`` (M, 2) px,
    power variogram h^α, dual form; coordinates in units of ``side`` px keep the system
    conditioned."""
    x, n = known / float(side), len(known)
    system = np.zeros((n + 1, n + 1))
    system[:n, :n] = -cdist(x, x) ** alpha
    system[:n, n] = system[n, :n] = 1.0
    sol = np.linalg.solve(system, np.concatenate([z, np.zeros((1, *z.shape[1:]))]))
    w, c = sol[:n], sol[n]
    t = targets / float(side)
    return np.concatenate([-(cdist(t[i:i + CHUNK], x) ** alpha) @ w + c for i in range(0, len(t), CHUNK)])


def two_phase_fill(image: np.ndarray, region: np.ndarray, *, alpha: float = 1.0) -> np.ndarray | None:
    """A hole that straddles two tissues (or tissue and background) filled phase by phase, or None
    when its context is not clearly two-phase.

    The context pixels (:func:`context_points`) are split in two (channel mean for colour): Otsu's
    classes, then the midpoint of their means as the threshold. Two-phase means each side holds
    ≥ ``PHASE_MIN_SHARE`` of them and the split explains ≥ ``PHASE_MIN_SEPARATION`` of their
    variance (Otsu's η = between-class / total). The boundary inside the hole continues the known
    one (:func:`_phase_boundary`: a quadratic logistic boundary fitted to the context's phases).
    Each phase's hole pixels are then kriged (:func:`kriging_fill`'s predictor, ``alpha``) from that phase's context only, so
    neither side's level bleeds into the other (the ramp a stationary fill draws across a tissue
    edge). float64, the input outside ``region``. Measured as a ring-check candidate
    (``stationary_fill(two_phase=True)``, ``bench/results/kriging_prior_round4.md``): large gains
    on the few holes across an edge at 256², wrong boundaries at 512² — not the default."""
    from skimage.filters import threshold_otsu

    region = np.asarray(region, bool)
    out = np.array(image, dtype=np.float64)
    if not region.any() or region.all():
        return None
    grey = out if out.ndim == 2 else out.mean(axis=-1)
    pts = context_points(region)
    v = grey[pts[:, 0], pts[:, 1]]
    if np.ptp(v) <= 0:
        return None
    high = v > threshold_otsu(v)
    if high.all() or not high.any():
        return None
    # Otsu's criterion is flat across a gap between the modes (scikit-image returns its low end):
    # cut at the midpoint of the two classes' means instead (one Ridler–Calvard step)
    threshold = 0.5 * (v[high].mean() + v[~high].mean())
    high = v > threshold  # the context's phases
    share = float(high.mean())
    between = share * (1 - share) * (v[high].mean() - v[~high].mean()) ** 2 if 0 < share < 1 else 0.0
    if min(share, 1 - share) < PHASE_MIN_SHARE or between < PHASE_MIN_SEPARATION * float(v.var()):
        return None
    holes = np.argwhere(region)
    hole_high = _phase_boundary(pts, high, holes)
    for side, sel in ((high, hole_high), (~high, ~hole_high)):
        if sel.any():
            out[holes[sel, 0], holes[sel, 1]] = _krige(pts[side], out[pts[side, 0], pts[side, 1]],
                                                       holes[sel], alpha, max(region.shape))
    return out


def _phase_boundary(known: np.ndarray, high: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Bool (M,): which ``targets`` (M, 2) px lie on the ``high`` side of the boundary between the
    ``known`` (N, 2) px's phases — logistic regression on quadratic features of the coordinates
    (a boundary with curvature, centred and scaled on the context)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import PolynomialFeatures

    centre, spread = known.mean(axis=0), known.std() + 1e-9
    poly = PolynomialFeatures(degree=2, include_bias=False)
    fit = LogisticRegression(C=100.0, max_iter=1000).fit(poly.fit_transform((known - centre) / spread), high)
    return fit.predict(poly.transform((targets - centre) / spread)).astype(bool)


def ring_px(region: np.ndarray) -> int:
    """Width of the known ring a prior is checked on: half the hole's equivalent radius, 2–16 px
    (wide enough to hold structure, narrow enough to stay near the hole)."""
    radius = np.sqrt(np.asarray(region, bool).sum() / np.pi)
    return int(np.clip(round(0.5 * radius), 2, 16))


def _biharmonic(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """scikit-image's solve in the input's float precision (the predictor's classical method has
    always filled float32 images in float32; the compositions pass float64)."""
    image = np.asarray(image)
    image = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float64)
    axis = None if image.ndim == 2 else -1
    return inpaint_biharmonic(image, region, channel_axis=axis)


def _low(x: np.ndarray) -> np.ndarray:
    sigma = (RING_SIGMA, RING_SIGMA) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma)


def stationary_fill(image: np.ndarray, region: np.ndarray, *,
                    alphas: tuple[float, ...] = STATIONARY_ALPHAS,
                    two_phase: bool = False) -> tuple[np.ndarray, str]:
    """(fill, choice): ``region`` of ``image`` ((H, W) or (H, W, C) float) filled by biharmonic,
    by kriging (:func:`kriging_fill`) with one of ``alphas`` or, with ``two_phase``, by
    :func:`two_phase_fill` where its context is two-phase — whichever predicts the ring
    (:func:`ring_px` wide) of known tissue around the hole best when the hole and the ring are
    hidden together: mean squared error of the σ = ``RING_SIGMA`` blurred fills on the ring (ties:
    the earlier candidate, biharmonic first). ``choice`` names it: ``"biharmonic"``,
    ``"kriging α=<α>"`` or ``"two-phase"``. float64; outside ``region`` the input. A ring with no
    known pixel (a hole reaching nearly everywhere) keeps biharmonic; a hole over ``CHECK_PIXELS``
    is checked on a block-averaged copy (:func:`_shrunk`). ``alphas=(1.0,)`` is session 20's
    two-way rule."""
    region = np.asarray(region, bool)
    image = np.asarray(image, np.float64)
    if not region.any():
        return image.copy(), "biharmonic"
    candidates = {**_stationary_candidates(alphas), **({"two-phase": two_phase_fill} if two_phase else {})}
    for name in _ring_ranking(*_shrunk(image, region), candidates):
        fill = candidates[name](image, region)
        if fill is not None:  # two-phase can decline at full size where the check's copy did not
            return fill, name
    return _biharmonic(image, region), "biharmonic"


def _stationary_candidates(alphas: tuple[float, ...]) -> dict:
    """name → fill(image, region): biharmonic and kriging with each of ``alphas``, in that order
    (the order ties are broken in)."""
    return {"biharmonic": _biharmonic,
            **{f"kriging α={a:g}": partial(kriging_fill, alpha=a) for a in alphas}}


def _shrunk(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image, region)`` as they are, or block-averaged by the integer factor that brings a hole
    over ``CHECK_PIXELS`` to about that size (a block touching the hole is hole)."""
    f = int(np.ceil(np.sqrt(region.sum() / CHECK_PIXELS)))
    if f <= 1:
        return image, region
    h, w = (region.shape[0] // f) * f, (region.shape[1] // f) * f
    blocks = (h // f, f, w // f, f)
    img = image[:h, :w].reshape(*blocks, *image.shape[2:]).mean(axis=(1, 3))
    return img, region[:h, :w].reshape(blocks).any(axis=(1, 3))


def _ring_predictions(image: np.ndarray, region: np.ndarray,
                      candidates: dict) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """``(target, predictions)``: the ring's (:func:`ring_px` wide) σ = ``RING_SIGMA`` blurred
    values, and each candidate's (name → fill(image, region), None to decline) blurred values
    there when it fills hole and ring together; candidates that decline are left out. ``(None,
    {})`` when there is no ring (a hole reaching nearly everywhere)."""
    wide = ndimage.binary_dilation(region, iterations=ring_px(region))
    ring = wide & ~region
    if wide.all() or not ring.any():
        return None, {}
    preds = {}
    for name, fill_fn in candidates.items():
        fill = fill_fn(image, wide)
        if fill is not None:
            preds[name] = _low(fill)[ring]
    return _low(image)[ring], preds


def _shift_predictions(image: np.ndarray, region: np.ndarray,
                       candidates: dict) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Like :func:`_ring_predictions`, but the check's hidden pixels are copies of the hole itself
    translated by its extent plus a gap (up, down, left, right; those inside the image), each
    filled alone from its own context: the candidates are scored at the hole's own distances from
    known tissue, not on a ring next to it. The gap (the context's reach, :func:`context_points`,
    plus the rim) keeps the lesion out of every copy's context, so the lesion's pixels enter the
    target and the prediction alike and cancel. ``(None, {})`` when no copy fits."""
    rows, cols = np.nonzero(region)
    gap = int(np.ceil(context_reach(region))) + RIM_PX + 1
    dy, dx = int(np.ptp(rows)) + 1 + gap, int(np.ptp(cols)) + 1 + gap
    low = _low(image)
    targets, preds = [], {name: [] for name in candidates}
    for oy, ox in ((-dy, 0), (dy, 0), (0, -dx), (0, dx)):
        r, c = rows + oy, cols + ox
        if r.min() < 0 or c.min() < 0 or r.max() >= region.shape[0] or c.max() >= region.shape[1]:
            continue
        copy = np.zeros_like(region)
        copy[r, c] = True
        if copy.all():
            continue
        targets.append(low[copy])
        for name, fill_fn in candidates.items():
            fill = fill_fn(image, copy)
            preds[name] = None if fill is None or preds[name] is None else [*preds[name], _low(fill)[copy]]
    if not targets:
        return None, {}
    return np.concatenate(targets), {n: np.concatenate(p) for n, p in preds.items() if p is not None}


def _ring_ranking(image: np.ndarray, region: np.ndarray, candidates: dict) -> list[str]:
    """The names of ``candidates`` ordered by how well each, filling hole and ring, predicts the
    ring's low frequencies (mean squared error; stable: ties keep the given order); candidates
    that decline are left out. Biharmonic alone when there is no ring."""
    target, preds = _ring_predictions(image, region, candidates)
    if target is None:
        return ["biharmonic"]
    errs = {name: float(np.mean((p - target) ** 2)) for name, p in preds.items()}
    return sorted(errs, key=errs.get)


def simplex_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(K,) weights ``w`` minimising ``‖P w − t‖²`` subject to ``w ≥ 0``, ``Σ w = 1`` (stacked
    regression with non-negative weights summing to one, Breiman 1996), ``preds`` P (R, K),
    ``target`` t (R,) or (R, C) (then P is (R, K, C) and the squared error sums over C).

    With ``Σ w = 1``, ``P w − t = D w`` for ``D = P − t 1ᵀ``: the point of the convex hull of D's
    columns nearest the origin. Solved exactly by enumerating the supports S (K ≤ 6, at most 63
    solves of the equality-constrained problem ``min w_Sᵀ G_SS w_S, 1ᵀ w_S = 1``, G = DᵀD, through
    its KKT system) and keeping the best feasible one; ties keep the earliest support (so the
    first of two equal candidates)."""
    p, t = np.asarray(preds, np.float64), np.asarray(target, np.float64)
    d = (p - t[:, None]).reshape(len(p), p.shape[1], -1)  # (R, K, C)
    k = d.shape[1]
    if not 1 <= k <= 6:
        raise ValueError(f"simplex_weights needs 1 to 6 candidates, got {k}")
    gram = np.einsum("rkc,rlc->kl", d, d)
    best, best_err = np.eye(k)[0], np.inf
    for mask in range(1, 2 ** k):
        s = [i for i in range(k) if mask >> i & 1]
        n = len(s)
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = 2.0 * gram[np.ix_(s, s)]
        kkt[:n, n] = kkt[n, :n] = 1.0
        sol = np.linalg.lstsq(kkt, np.r_[np.zeros(n), 1.0], rcond=None)[0][:n]
        if np.any(sol < -1e-12):
            continue
        w = np.zeros(k)
        w[s] = np.clip(sol, 0.0, None)
        w /= w.sum()
        err = float(w @ gram @ w)
        if err < best_err - 1e-12 * (1.0 + err):  # strictly better: ties keep the earlier support
            best, best_err = w, err
    return best


def stacked_fill(image: np.ndarray, region: np.ndarray, *, alphas: tuple[float, ...] = STACK_ALPHAS,
                 check: str = "ring") -> tuple[np.ndarray, dict[str, float]]:
    """(fill, weights): ``region`` of ``image`` ((H, W) or (H, W, C) float) filled by the convex
    combination of biharmonic and kriging with each of ``alphas`` (:func:`stationary_fill`'s
    candidates and α = 0.25) whose blurred fills best predict the hidden ring — the same check, with the one
    best candidate replaced by :func:`simplex_weights` over all of them (the choice is the
    simplex's vertex case). ``weights`` maps the candidates with weight > ``STACK_MIN_WEIGHT``
    to their weight (renormalised to sum 1); those alone are computed at full size. Checked on
    the block-averaged copy for a hole over ``CHECK_PIXELS`` (:func:`_shrunk`); biharmonic alone
    where there is no ring. ``check="shift"`` fits the weights on translated copies of the hole
    instead (:func:`_shift_predictions`; the ring where no copy fits). float64; outside ``region``
    the input."""
    region = np.asarray(region, bool)
    image = np.asarray(image, np.float64)
    if not region.any():
        return image.copy(), {"biharmonic": 1.0}
    candidates = _stationary_candidates(alphas)
    if check not in ("ring", "shift"):
        raise ValueError(f"unknown check {check!r}; expected 'ring' or 'shift'")
    target, preds = _shift_predictions(*_shrunk(image, region), candidates) if check == "shift" else (None, {})
    if target is None:
        target, preds = _ring_predictions(*_shrunk(image, region), candidates)
    if target is None:
        return _biharmonic(image, region), {"biharmonic": 1.0}
    names = list(preds)
    w = simplex_weights(np.stack([preds[n] for n in names], axis=1), target)
    keep = {n: float(x) for n, x in zip(names, w, strict=True) if x > STACK_MIN_WEIGHT}
    total = sum(keep.values())
    weights = {n: x / total for n, x in keep.items()}
    fill = sum(x * candidates[n](image, region) for n, x in weights.items())
    return np.where(region[(...,) + (None,) * (image.ndim - 2)], fill, image), weights


def prior_rule(prior: str) -> str:
    """What names ``prior``'s rule in a generator's hash (``generator.build.load_generator``):
    ``""`` for biharmonic (scikit-image's solve), ``KRIGING_RULE`` for the ring's one-best choice,
    and that with ``STACK_RULE`` for the stacked one (read when called, so a changed rule changes
    the hash)."""
    return {"biharmonic": "", "kriging": KRIGING_RULE, "stacked": f"{KRIGING_RULE} | {STACK_RULE}"}[prior]


def prior_fill(image: np.ndarray, region: np.ndarray, prior: str) -> np.ndarray:
    """The classical coarse fill a generator composes on: ``"biharmonic"`` (scikit-image, in the
    input's float precision), ``"kriging"`` (:func:`stationary_fill`'s choice, float64) or
    ``"stacked"`` (:func:`stacked_fill`'s convex combination, float64); the input outside
    ``region``."""
    if prior == "biharmonic":
        return _biharmonic(image, region) if np.any(region) else np.array(image)
    if prior == "kriging":
        return stationary_fill(image, region)[0]
    if prior == "stacked":
        return stacked_fill(image, region)[0]
    raise ValueError(f"unknown coarse prior {prior!r}; expected one of {PRIORS}")
