"""The stationary-prior diagnostic (bench/diag_kriging_prior.py): kernels with a linear drift
reproduce a plane exactly, the context stays within its point budget and off the hole, and the
ring check picks a candidate that predicts hidden tissue better than the others."""

import numpy as np

from bench.diag_kriging_prior import CANDIDATES, MAX_POINTS, context_points, rbf_fill, ring_selected


def _disc(size=128, r=0.15):
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return y, x, (y - 0.5) ** 2 + (x - 0.5) ** 2 < r**2


def test_linear_drift_kernels_reproduce_a_plane():
    y, x, hole = _disc()
    plane = 0.2 + 0.3 * x - 0.4 * y
    for kind in ("biharmonic", "tps", "cubic"):
        np.testing.assert_allclose(rbf_fill(plane, hole, kind)[hole], plane[hole], atol=1e-5)
    # the linear kernel has only a constant drift: a plane is not in its null space
    assert np.abs(rbf_fill(plane, hole, "linear")[hole] - plane[hole]).max() > 1e-4


def test_context_is_known_pixels_within_budget():
    _, _, hole = _disc(size=400, r=0.3)
    pts = context_points(hole).astype(int)
    assert len(pts) <= MAX_POINTS
    assert not hole[pts[:, 0], pts[:, 1]].any()
    # every pixel touching the hole is used (continuity at the rim)
    from scipy import ndimage

    rim = ndimage.binary_dilation(hole) & ~hole
    used = np.zeros_like(hole)
    used[pts[:, 0], pts[:, 1]] = True
    assert used[rim].all()


def test_outside_the_hole_is_untouched_and_the_ring_choice_is_a_candidate():
    y, x, hole = _disc()
    img = 0.5 + 0.2 * np.sin(6 * x) * np.cos(5 * y)
    fill, chosen = ring_selected(img, hole)
    assert chosen in CANDIDATES
    np.testing.assert_array_equal(fill[~hole], img[~hole])
    # a very smooth field: the ring picks the candidate that is also best on the hole itself
    # (the smoothest kernel, r³: 7e-9 MSE against biharmonic's 2e-7 and linear's 3e-6)
    errs = {k: np.mean((rbf_fill(img, hole, k) - img)[hole] ** 2) for k in CANDIDATES}
    assert chosen == min(errs, key=errs.get) == "cubic"
