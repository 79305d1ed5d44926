import numpy as np
import pytest
from skimage.metrics import structural_similarity

from shared import metrics as M


def _square(top, left, side, size=32):
    m = np.zeros((size, size), bool)
    m[top : top + side, left : left + side] = True
    return m


def test_dice_and_iou_hand_values():
    pred, gt = _square(0, 0, 4), _square(2, 0, 4)  # 16 px each, overlap 2x4 = 8
    assert M.dice(pred, gt) == pytest.approx(2 * 8 / 32)
    assert M.iou(pred, gt) == pytest.approx(8 / 24)


def test_edge_cases_both_empty_and_one_empty():
    empty, full = np.zeros((8, 8), bool), _square(1, 1, 3, 8)
    for fn in (M.dice, M.iou, M.nsd):
        assert fn(empty, empty) == 1.0
        assert fn(empty, full) == 0.0 and fn(full, empty) == 0.0
    with pytest.raises(ValueError, match="prediction is"):
        M.dice(np.zeros((4, 4)), np.zeros((5, 5)))


def test_nsd_of_a_shifted_square():
    gt = _square(8, 8, 10)
    assert M.nsd(gt, gt) == pytest.approx(1.0)
    # Shift by 1 px: every boundary pixel is within 2 px of the other boundary.
    assert M.nsd(np.roll(gt, 1, axis=1), gt, tolerance_px=2) == pytest.approx(1.0)
    # Shift by 4 px with tolerance 2: the two vertical sides (10 px each, per mask) are 4 px from
    # the other mask's sides; the horizontal sides overlap for 6 of their 10 px.
    shifted = np.roll(gt, 4, axis=1)
    value = M.nsd(shifted, gt, tolerance_px=2)
    assert 0.3 < value < 0.8
    assert M.nsd(shifted, gt, tolerance_px=5) == pytest.approx(1.0)


def test_inpainting_metrics_inside_mask():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32))
    y = x.copy()
    mask = _square(4, 4, 10)
    y[mask] += 0.1
    assert M.masked_mse(x, y, mask) == pytest.approx(0.01)
    assert M.masked_psnr(x, y, mask) == pytest.approx(20.0)
    assert M.masked_psnr(x, x, mask) == float("inf")
    assert M.masked_ssim(x, x, mask) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        M.masked_mse(x, y, np.zeros_like(mask))


def test_masked_ssim_equals_skimage_when_mask_covers_everything():
    rng = np.random.default_rng(1)
    x = rng.random((40, 40))
    y = np.clip(x + 0.1 * rng.standard_normal((40, 40)), 0, 1)
    ref = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert M.masked_ssim(x, y, np.ones((40, 40), bool)) == pytest.approx(ref, abs=1e-12)


def test_texture_ratio():
    rng = np.random.default_rng(2)
    ref = rng.random((32, 32))
    mask = _square(8, 8, 16)
    assert M.texture_ratio(ref, ref, mask) == pytest.approx(1.0)
    smooth = np.full_like(ref, 0.5)
    assert M.texture_ratio(smooth, ref, mask) == pytest.approx(0.0)
    assert M.texture_ratio(0.5 + 0.5 * (ref - 0.5), ref, mask) == pytest.approx(0.25)


def test_bootstrap_ci():
    values = np.random.default_rng(0).normal(0.7, 0.1, 200)
    mean, lo, hi = M.bootstrap_ci(values, seed=0)
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi and hi - lo < 0.05
    assert M.bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    d, lo, hi = M.paired_bootstrap_ci(values + 0.1, values)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
