"""generator.kriging: the power-variogram kriging fill equals the ordinary-kriging system solved
directly, the context stays within its budget and off the hole, and the ring check picks
biharmonic for a smooth field, kriging for a rough one, and the α that predicts the ring best;
the bench diagnostic's kernels."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.restoration import inpaint_biharmonic

from generator.kriging import (
    MAX_POINTS,
    STATIONARY_ALPHAS,
    context_points,
    kriging_fill,
    prior_fill,
    stationary_fill,
)


def _disc(size=64, r=0.15):
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return y, x, (y - 0.5) ** 2 + (x - 0.5) ** 2 < r**2


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
def test_kriging_fill_is_the_ordinary_kriging_predictor(alpha):
    """Parity with the textbook (primal) system (Cressie 1993, eq. 3.2.12) for γ(h) = h^α:
    [Γ 1; 1ᵀ 0] [λ; μ] = [γ₀; 1], prediction λᵀz — our dual solve with a wrong power, a linear
    drift instead of a constant one, or unscaled/scaled coordinates mixed up change the numbers."""
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.standard_normal((40, 40)), 1.5)
    _, _, hole = _disc(40, 0.12)
    got = kriging_fill(image, hole, alpha=alpha)
    pts = context_points(hole)
    z = image[pts[:, 0], pts[:, 1]]
    gamma = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=2).astype(np.float64) ** alpha
    n = len(pts)
    a = np.ones((n + 1, n + 1))
    a[:n, :n], a[n, n] = gamma, 0.0
    targets = np.argwhere(hole)
    g0 = np.linalg.norm(pts[None, :, :] - targets[:, None, :], axis=2) ** alpha  # (M, N)
    rhs = np.concatenate([g0.T, np.ones((1, len(targets)))])
    lam = np.linalg.solve(a, rhs)[:n]
    np.testing.assert_allclose(got[hole], lam.T @ z, atol=1e-8)
    np.testing.assert_array_equal(got[~hole], image[~hole])
    # a constant is reproduced exactly (the constant drift); a plane is not (no linear drift)
    np.testing.assert_allclose(kriging_fill(np.full((40, 40), 0.3), hole, alpha=alpha)[hole], 0.3,
                               atol=1e-9)
    with pytest.raises(ValueError, match="0 < alpha < 2"):
        kriging_fill(image, hole, alpha=2.0)


def test_the_linear_variogram_is_scipys_rbf_with_kernel_minus_r():
    """α = 1 equals scipy's RBFInterpolator(kernel="linear", degree=0) on the same context: the
    session-20 implementation, so its tables stay reproducible."""
    from scipy.interpolate import RBFInterpolator

    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.standard_normal((64, 64, 2)), (2, 2, 0))
    _, _, hole = _disc(64, 0.2)
    pts = context_points(hole)
    fit = RBFInterpolator(pts / 64.0, image[pts[:, 0], pts[:, 1]], kernel="linear", degree=0)
    np.testing.assert_allclose(kriging_fill(image, hole)[hole], fit(np.argwhere(hole) / 64.0),
                               atol=1e-10)


def test_context_is_known_pixels_within_budget_with_the_whole_rim():
    _, _, hole = _disc(size=400, r=0.3)
    pts = context_points(hole)
    assert len(pts) <= MAX_POINTS
    assert not hole[pts[:, 0], pts[:, 1]].any()
    rim = ndimage.binary_dilation(hole) & ~hole
    used = np.zeros_like(hole)
    used[pts[:, 0], pts[:, 1]] = True
    assert used[rim].all()
    # a small hole uses every known pixel out to its reach (no thinning needed)
    _, _, small = _disc(size=64, r=0.08)
    dist = ndimage.distance_transform_edt(~small)
    assert len(context_points(small)) == int(((dist > 0) & (dist <= 6.0)).sum())


def _choice_alpha(choice: str) -> float:
    assert choice.startswith("kriging α=")
    return float(choice.split("=")[1])


def test_ring_check_picks_biharmonic_for_smooth_and_kriging_for_rough_tissue():
    y, x, hole = _disc(128)
    smooth = 0.5 + 0.2 * np.sin(6 * x) * np.cos(5 * y)
    fill, choice = stationary_fill(smooth, hole)
    assert choice == "biharmonic"
    np.testing.assert_allclose(fill, inpaint_biharmonic(smooth, hole), atol=1e-12)
    # Brownian-like tissue (integrated noise, rough at every scale): kriging, with the α it names
    rng = np.random.default_rng(1)
    rough = 0.5 + 0.3 * ndimage.gaussian_filter(rng.standard_normal((128, 128)), 3)
    fill, choice = stationary_fill(rough, hole)
    alpha = _choice_alpha(choice)
    assert alpha in STATIONARY_ALPHAS
    np.testing.assert_allclose(fill, kriging_fill(rough, hole, alpha=alpha), atol=1e-12)
    np.testing.assert_array_equal(fill[~hole], rough[~hole])


def test_ring_check_picks_the_alpha_that_predicts_the_ring_best():
    """The chosen candidate has the lowest low-pass error on the hidden ring among biharmonic and
    every α (a check that kept the first kriging candidate, or compared on the hole instead of the
    ring, picks another); white noise (no spatial correlation) wants the roughest, α = 0.5."""
    from generator.kriging import _biharmonic, _low, ring_px

    _, _, hole = _disc(96, 0.1)
    rng = np.random.default_rng(4)
    for field in (rng.random((96, 96)),
                  ndimage.gaussian_filter(rng.standard_normal((96, 96)), 1.5),
                  np.cumsum(np.cumsum(rng.standard_normal((96, 96)), 0), 1) / 96):
        wide = ndimage.binary_dilation(hole, iterations=ring_px(hole))
        ring = wide & ~hole
        errs = {"biharmonic": _biharmonic(field, wide)}
        errs |= {f"kriging α={a:g}": kriging_fill(field, wide, alpha=a) for a in STATIONARY_ALPHAS}
        errs = {k: np.mean((_low(v)[ring] - _low(field)[ring]) ** 2) for k, v in errs.items()}
        assert stationary_fill(field, hole)[1] == min(errs, key=errs.get)
    assert stationary_fill(rng.random((96, 96)), hole)[1] == "kriging α=0.5"
    # the two-way rule of session 20 is one argument away
    assert stationary_fill(rng.random((96, 96)), hole, alphas=(1.0,))[1] == "kriging α=1"


def test_prior_fill_handles_colour_empty_holes_and_names_bad_priors():
    _, _, hole = _disc(48)
    rng = np.random.default_rng(2)
    rgb = ndimage.gaussian_filter(rng.random((48, 48, 3)), (2, 2, 0))
    out = prior_fill(rgb, hole, "kriging")
    assert out.shape == rgb.shape and np.array_equal(out[~hole], rgb[~hole])
    choice = stationary_fill(rgb, hole)[1]  # one choice for all channels
    for c in range(3):  # each channel filled as its own grey image would be
        grey = (inpaint_biharmonic(rgb[..., c], hole) if choice == "biharmonic"
                else kriging_fill(rgb[..., c], hole, alpha=_choice_alpha(choice)))
        np.testing.assert_allclose(out[..., c][hole], grey[hole], atol=1e-9)
    empty = np.zeros((48, 48), bool)
    np.testing.assert_array_equal(prior_fill(rgb[..., 0], empty, "kriging"), rgb[..., 0])
    with pytest.raises(ValueError, match="unknown coarse prior"):
        prior_fill(rgb[..., 0], hole, "nearest")


def test_bench_diagnostic_kernels_with_a_linear_drift_reproduce_a_plane():
    from bench.diag_kriging_prior import rbf_fill

    y, x, hole = _disc(64)
    plane = 0.2 + 0.3 * x - 0.4 * y
    for kind in ("biharmonic", "tps", "cubic"):
        np.testing.assert_allclose(rbf_fill(plane, hole, kind)[hole], plane[hole], atol=1e-5)
    assert np.abs(rbf_fill(plane, hole, "linear")[hole] - plane[hole]).max() > 1e-4


def test_a_large_hole_is_checked_on_a_shrunk_copy_with_the_same_choice():
    """A hole over CHECK_PIXELS is checked block-averaged (a 196 000-pixel hole took ~40 s at full
    size): still biharmonic for smooth tissue and kriging for rough, filled at full size."""
    from generator.kriging import CHECK_PIXELS, _shrunk

    y, x, hole = _disc(256, 0.36)
    assert hole.sum() > CHECK_PIXELS
    small_img, small_hole = _shrunk(np.zeros((256, 256)), hole)
    assert small_hole.shape == (128, 128) and small_hole.sum() <= CHECK_PIXELS
    smooth = 0.5 + 0.2 * np.sin(3 * x) * np.cos(2 * y)
    assert stationary_fill(smooth, hole)[1] == "biharmonic"
    rough = 0.5 + 0.3 * ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((256, 256)), 3)
    fill, choice = stationary_fill(rough, hole)
    np.testing.assert_allclose(fill, kriging_fill(rough, hole, alpha=_choice_alpha(choice)), atol=1e-12)


def test_two_phase_fill_continues_a_tissue_edge_instead_of_a_ramp():
    """A hole across a straight edge between two flat tissues (0.15 | 0.75, a little texture):
    each side is filled from its own phase and the edge continues — low-frequency error a tenth of
    biharmonic's ramp; the ring check picks it only when offered; one tissue alone is declined (a
    threshold at Otsu's low end, a boundary fitted on the wrong coordinates, or phases kriged from
    the whole context all fail)."""
    from generator.kriging import two_phase_fill

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    hole = (yy - 60) ** 2 + (xx - 55) ** 2 < 15**2
    for offset in (60, 70, 80):  # the edge through, left of and right of the hole's centre
        clean = np.where(xx + 0.3 * yy < offset, 0.15, 0.75)
        image = clean + 0.03 * ndimage.gaussian_filter(rng.standard_normal((128, 128)), 1)
        fill = two_phase_fill(image, hole)
        assert fill is not None and np.array_equal(fill[~hole], image[~hole])

        def low_err(f, clean=clean):
            return np.sqrt(np.mean((ndimage.gaussian_filter(f - clean, 2))[hole] ** 2))

        assert low_err(fill) < 0.2 * low_err(inpaint_biharmonic(image, hole))
        assert stationary_fill(image, hole, two_phase=True)[1] == "two-phase"
        assert stationary_fill(image, hole)[1] != "two-phase"
    assert two_phase_fill(0.5 + 0.05 * rng.standard_normal((128, 128)), hole) is None
    assert two_phase_fill(np.full((128, 128), 0.4), hole) is None
