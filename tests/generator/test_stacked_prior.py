"""generator.kriging.simplex_weights / stacked_fill: the weights are the constrained least-squares
solution (closed form for two candidates, a brute-force simplex search for four), the stack is never
worse than the best single candidate on the hidden ring, and the fill is the weighted sum of the
candidates' own fills, the input outside the hole."""

import numpy as np
import pytest
from scipy import ndimage

from generator.kriging import (
    STACK_ALPHAS,
    _biharmonic,
    _low,
    kriging_fill,
    prior_fill,
    ring_px,
    simplex_weights,
    stacked_fill,
    stationary_fill,
)


def test_two_candidates_match_the_closed_form():
    """min_w ‖w d₁ + (1 − w) d₂‖², d = p − t: w = clip(−d₂·(d₁ − d₂) / ‖d₁ − d₂‖², 0, 1) — a sign
    error, a missing Σw = 1 or an unconstrained (negative) weight gives another number."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal(50)
    for shift in (0.3, -0.3, 2.0):  # interior optimum, and the two clipped ends
        p1 = t + rng.standard_normal(50) * 0.5 + shift
        p2 = t + rng.standard_normal(50) * 0.5 - 0.3
        d1, d2 = p1 - t, p2 - t
        w = np.clip(-d2 @ (d1 - d2) / ((d1 - d2) @ (d1 - d2)), 0, 1)
        np.testing.assert_allclose(simplex_weights(np.stack([p1, p2], 1), t), [w, 1 - w], atol=1e-9)


def test_four_candidates_match_a_simplex_grid_search_and_beat_each_vertex():
    rng = np.random.default_rng(1)
    t = rng.standard_normal(40)
    p = t[:, None] + rng.standard_normal((40, 4)) * [0.4, 0.6, 0.8, 1.0] + [0.2, -0.3, 0.1, 0.5]
    w = simplex_weights(p, t)
    assert np.all(w >= 0) and np.isclose(w.sum(), 1.0)
    err = np.sum((p @ w - t) ** 2)
    grid = np.array([(a, b, c, 20 - a - b - c) for a in range(21) for b in range(21 - a)
                     for c in range(21 - a - b)]) / 20.0
    best_grid = np.min(np.sum((p @ grid.T - t[:, None]) ** 2, axis=0))
    assert err <= best_grid + 1e-9  # exact beats every point of a 0.05 simplex grid
    assert err <= np.min(np.sum((p - t[:, None]) ** 2, axis=0))  # and every single candidate
    # an exact candidate takes all the weight; two identical ones split nothing off the first
    np.testing.assert_allclose(simplex_weights(np.c_[p[:, :2], t], t), [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(simplex_weights(np.c_[t, t], t), [1, 0], atol=1e-12)
    with pytest.raises(ValueError, match="1 to 6 candidates"):
        simplex_weights(np.zeros((5, 7)), np.zeros(5))


def test_colour_weights_sum_the_error_over_channels():
    rng = np.random.default_rng(2)
    t = rng.standard_normal((30, 3))
    p = t[:, None, :] + rng.standard_normal((30, 2, 3)) * 0.5
    flat = simplex_weights(p.transpose(0, 2, 1).reshape(90, 2), t.reshape(90))
    np.testing.assert_allclose(simplex_weights(p, t), flat, atol=1e-12)


def test_stacked_fill_is_the_ring_fitted_mix_of_the_candidates():
    """The weights are simplex_weights of the candidates' blurred fills of hole + ring on the ring
    (fitted on the hole instead, or with the ring shown, they change), the fill their weighted sum
    at full size, the input outside the hole, and on the ring the stack is at least as good as
    the committed one-best choice."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:96] / 95.0
    hole = (y - 0.5) ** 2 + (x - 0.45) ** 2 < 0.1**2
    field = 0.5 + 0.25 * ndimage.gaussian_filter(rng.standard_normal((96, 96)), 2.5) + 0.1 * np.sin(5 * x)
    fill, weights = stacked_fill(field, hole)
    assert np.isclose(sum(weights.values()), 1.0) and len(weights) >= 2
    assert STACK_ALPHAS == (0.25, 0.5, 1.0, 1.5)  # round 5's adopted candidates
    fns = {"biharmonic": _biharmonic,
           **{f"kriging α={a:g}": (lambda im, r, a=a: kriging_fill(im, r, alpha=a)) for a in STACK_ALPHAS}}
    wide = ndimage.binary_dilation(hole, iterations=ring_px(hole))
    ring = wide & ~hole
    preds = np.stack([_low(fn(field, wide))[ring] for fn in fns.values()], 1)
    expect = simplex_weights(preds, _low(field)[ring])
    np.testing.assert_allclose([weights.get(n, 0.0) for n in fns], expect, atol=1e-3)
    mix = sum(w * fns[n](field, hole) for n, w in weights.items())
    np.testing.assert_allclose(fill[hole], mix[hole], atol=1e-12)
    np.testing.assert_array_equal(fill[~hole], field[~hole])
    ring_err = np.sum((preds @ expect - _low(field)[ring]) ** 2)
    assert ring_err <= np.min(np.sum((preds - _low(field)[ring][:, None]) ** 2, axis=0)) + 1e-12
    np.testing.assert_allclose(prior_fill(field, hole, "stacked"), fill, atol=1e-12)


def test_stacked_fill_keeps_smooth_fields_biharmonic_and_handles_colour_and_empty_holes():
    y, x = np.mgrid[0:64, 0:64] / 63.0
    hole = (y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.12**2
    smooth = 0.5 + 0.2 * np.sin(6 * x) * np.cos(5 * y)
    fill, weights = stacked_fill(smooth, hole)
    assert weights == {"biharmonic": 1.0} and stationary_fill(smooth, hole)[1] == "biharmonic"
    rgb = np.stack([smooth, smooth ** 2, 1 - smooth], -1)
    out, _ = stacked_fill(rgb, hole)
    assert out.shape == rgb.shape and np.array_equal(out[~hole], rgb[~hole])
    empty = np.zeros_like(hole)
    np.testing.assert_array_equal(stacked_fill(smooth, empty)[0], smooth)


def test_shift_check_fits_the_weights_on_translated_copies_of_the_hole():
    """check="shift": the weights are simplex_weights of the candidates' blurred fills of each
    in-image translated copy (filled alone) on that copy — not the ring's; the hole's own content
    (the lesion) does not move them, because every copy's context lies beyond its reach; a hole
    with no room for a copy falls back to the ring."""
    from generator.kriging import _shift_predictions, _stationary_candidates

    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:128, 0:128] / 127.0
    hole = (y - 0.2) ** 2 + (x - 0.5) ** 2 < 0.07**2  # near the top: the upward copy does not fit
    field = 0.5 + 0.25 * ndimage.gaussian_filter(rng.standard_normal((128, 128)), 3.0) + 0.1 * np.sin(4 * y)
    fill, weights = stacked_fill(field, hole, check="shift")
    candidates = _stationary_candidates(STACK_ALPHAS)
    rows, cols = np.nonzero(hole)
    gap = int(np.ceil(max(6.0, np.sqrt(hole.sum() / np.pi)))) + 3
    shifts = [(oy, ox) for oy, ox in ((-(np.ptp(rows) + 1 + gap), 0), (np.ptp(rows) + 1 + gap, 0),
                                      (0, -(np.ptp(cols) + 1 + gap)), (0, np.ptp(cols) + 1 + gap))
              if rows.min() + oy >= 0 and rows.max() + oy < 128 and cols.min() + ox >= 0 and cols.max() + ox < 128]
    assert len(shifts) == 3  # down, left, right
    copies = [np.roll(hole, s, axis=(0, 1)) for s in shifts]
    target = np.concatenate([_low(field)[c] for c in copies])
    preds = np.stack([np.concatenate([_low(fn(field, c))[c] for c in copies]) for fn in candidates.values()], 1)
    expect = {n: w for n, w in zip(candidates, simplex_weights(preds, target), strict=True) if w > 1e-3}
    total = sum(expect.values())
    assert weights.keys() == expect.keys()
    for name, w in expect.items():
        assert weights[name] == pytest.approx(w / total, abs=1e-9)
    assert weights != stacked_fill(field, hole)[1]  # the ring check weighs them otherwise
    np.testing.assert_allclose(fill, sum(w * candidates[n](field, hole) for n, w in weights.items()), atol=1e-12)
    # a lesion inside the hole changes no weight: target and predictions see it alike
    lesioned = np.where(hole, 1.0 - field + rng.random(field.shape), field)
    assert stacked_fill(lesioned, hole, check="shift")[1] == pytest.approx(weights, abs=1e-9)
    t2, p2 = _shift_predictions(lesioned, hole, candidates)
    np.testing.assert_allclose(t2, target, atol=1e-12)
    # no room for any copy: the ring check's weights
    big = (y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.3**2
    assert stacked_fill(field, big, check="shift")[1] == pytest.approx(stacked_fill(field, big)[1], abs=1e-12)
    with pytest.raises(ValueError, match="unknown check"):
        stacked_fill(field, hole, check="rim")
