"""The contralateral-prior diagnostic (bench/diag_symmetric_prior.py): an exactly mirror-symmetric
image is reconstructed from its twin, an image without a twin falls back to biharmonic."""

import numpy as np
from skimage.restoration import inpaint_biharmonic

from bench.diag_symmetric_prior import MirrorAxis, mirror_axis, symmetric_prior


def _symmetric_image(h=128, w=128, angle_deg=6.0, col=70.0) -> tuple[np.ndarray, MirrorAxis]:
    """A smooth image symmetric about the line through ((h-1)/2, col) at angle_deg: a function of
    the position along the line and the *squared* distance from it (even in the distance)."""
    axis = MirrorAxis(angle_deg, ((h - 1) / 2, col), 1.0)
    t = np.deg2rad(angle_deg)
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = rr - axis.point[0], cc - axis.point[1]
    along = dy * np.cos(t) + dx * np.sin(t)
    across = -dy * np.sin(t) + dx * np.cos(t)
    img = 0.5 + 0.2 * np.sin(along / 7.0) * np.cos(across**2 / 300.0) + 0.1 * np.cos(across / 9.0)
    return img, axis


def test_reflect_is_an_involution_fixing_the_line():
    axis = MirrorAxis(10.0, (40.0, 55.0), 1.0)
    rows, cols = np.array([3.0, 80.0, 40.0]), np.array([7.0, 90.0, 55.0])
    r2, c2 = axis.reflect(*axis.reflect(rows, cols))
    np.testing.assert_allclose(r2, rows, atol=1e-9)
    np.testing.assert_allclose(c2, cols, atol=1e-9)
    # a point on the line (the axis point + any multiple of the direction) is its own mirror
    t = np.deg2rad(10.0)
    on = np.array([40.0 + 20 * np.cos(t)]), np.array([55.0 + 20 * np.sin(t)])
    np.testing.assert_allclose(np.concatenate(axis.reflect(*on)), np.concatenate(on), atol=1e-9)


def test_axis_found_and_twin_fills_the_hole():
    img, truth = _symmetric_image()
    region = np.zeros_like(img, bool)
    region[30:60, 82:104] = True  # one side of the line only; its twin is known
    axis = mirror_axis(img, ~region)
    assert axis is not None and abs(axis.angle_deg - truth.angle_deg) <= 0.5
    # the line passes the axis row at col 70 (± a quarter pixel of the fine search)
    assert abs(axis.point[1] - truth.point[1]) <= 0.5
    fill, alpha, _ = symmetric_prior(img, region)
    base = inpaint_biharmonic(img, region)
    err_fill = np.abs(fill - img)[region].max()
    err_base = np.abs(base - img)[region].max()
    assert alpha > 0.9
    assert err_fill < 0.1 * err_base  # the twin, not the rim's interpolation
    np.testing.assert_array_equal(fill[~region], img[~region])


def test_no_twin_means_biharmonic():
    rng = np.random.default_rng(0)
    img = rng.random((96, 96))  # white noise: no line predicts the ring better than biharmonic
    region = np.zeros_like(img, bool)
    region[40:56, 20:36] = True
    fill, alpha, mirror = symmetric_prior(img, region)
    base = inpaint_biharmonic(img, region)
    assert alpha < 0.2
    np.testing.assert_allclose(fill, base + alpha * (mirror - base), atol=1e-12)
