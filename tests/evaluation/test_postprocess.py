import numpy as np
import pytest

from finetune.evaluation.postprocess import (
    coarse_mask,
    keep_largest_components,
    keep_peak_component,
    kmeans_binarize,
    mask_to_boxes,
    sample_points,
    scale_boxes,
    threshold_binarize,
)


def test_kmeans_higher_centroid_is_foreground():
    sal = np.full((10, 12), 0.1)
    sal[2:5, 3:9] = 0.9
    sal[7, 7] = 0.15  # stays background
    want = np.zeros_like(sal, dtype=bool)
    want[2:5, 3:9] = True
    np.testing.assert_array_equal(kmeans_binarize(sal), want)
    # inverting the map swaps foreground and background
    np.testing.assert_array_equal(kmeans_binarize(1 - sal), ~want)


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_map_gives_empty_mask(value):
    sal = np.full((8, 8), value)
    assert not kmeans_binarize(sal).any()
    assert not coarse_mask(sal).any()
    assert mask_to_boxes(coarse_mask(sal)).shape == (0, 4)


def test_threshold_is_strict():
    sal = np.array([[0.3, 0.31], [0.0, 1.0]])
    np.testing.assert_array_equal(threshold_binarize(sal, threshold=0.3), [[False, True], [False, True]])


def test_keep_largest_components_exact_k():
    m = np.zeros((12, 12), dtype=bool)
    m[0:3, 0:3] = True  # 9 px
    m[6:8, 6:8] = True  # 4 px
    m[11, 0] = True  # 1 px
    m[0, 11] = True  # 1 px (tie with the one above; upstream would keep both)
    one = keep_largest_components(m, 1)
    assert one.sum() == 9 and one[0:3, 0:3].all()
    two = keep_largest_components(m, 2)
    assert two.sum() == 13
    three = keep_largest_components(m, 3)
    assert three.sum() == 14
    # diagonal neighbours are connected (8-connectivity, as cv2 upstream)
    d = np.eye(4, dtype=bool)
    assert keep_largest_components(d, 1).sum() == 4
    with pytest.raises(ValueError, match=">= 1"):
        keep_largest_components(m, 0)


def test_peak_component_is_the_one_holding_the_maximum_not_the_largest():
    sal = np.full((16, 16), 0.05)
    sal[1:9, 1:9] = 0.6  # large, warm blob (64 px)
    sal[12:14, 12:14] = 0.7  # small blob holding the peak (4 px)
    sal[13, 12] = 1.0  # the maximum, off the diagonal: a transposed argmax lands on (12, 13)
    largest = coarse_mask(sal, method="threshold", threshold=0.5)
    peak = coarse_mask(sal, method="threshold", threshold=0.5, component="peak")
    assert largest.sum() == 64 and largest[1:9, 1:9].all()
    assert peak.sum() == 4 and peak[12:14, 12:14].all()
    np.testing.assert_array_equal(mask_to_boxes(peak), [[12, 12, 13, 13]])
    # the peak's pixel is foreground of the 2-means mask too, so the same component comes back
    np.testing.assert_array_equal(coarse_mask(sal, component="peak"), peak)
    # a threshold above the maximum: no foreground, nothing to keep
    assert not coarse_mask(sal, method="threshold", threshold=1.0, component="peak").any()
    # the peak outside every component (possible for a hand-made mask): empty, not a wrong pick
    assert not keep_peak_component(largest, sal).any()
    with pytest.raises(ValueError, match="component rule"):
        coarse_mask(sal, component="biggest")


def test_pipeline_config_honours_the_component_rule():
    from finetune.evaluation.evaluate import EvalConfig, prompts_from_mask, saliency_to_coarse

    sal = np.zeros((20, 20))
    sal[0:10, 0:10] = 0.8
    sal[15:18, 15:18] = 0.9
    cfg = EvalConfig(binarize="threshold", threshold=0.5, component="peak", box_dilation_px=1)
    boxes, points = prompts_from_mask(saliency_to_coarse(sal, cfg), cfg, 0)
    np.testing.assert_array_equal(boxes, [[14, 14, 18, 18]])
    assert points.shape == (0, 2)
    default = EvalConfig(binarize="threshold", threshold=0.5, component="largest")
    np.testing.assert_array_equal(prompts_from_mask(saliency_to_coarse(sal, default), default, 0)[0],
                                  [[0, 0, 9, 9]])


def test_boxes_union_components_and_dilation():
    m = np.zeros((20, 30), dtype=bool)
    m[2:5, 3:7] = True  # rows 2..4, cols 3..6
    m[10:18, 20:29] = True  # rows 10..17, cols 20..28 (larger)
    np.testing.assert_array_equal(mask_to_boxes(m), [[3, 2, 28, 17]])
    np.testing.assert_array_equal(mask_to_boxes(m, mode="components"), [[20, 10, 28, 17], [3, 2, 6, 4]])
    # dilation grows every side and clips at the border (W-1 = 29, H-1 = 19)
    np.testing.assert_array_equal(mask_to_boxes(m, dilation_px=3), [[0, 0, 29, 19]])
    np.testing.assert_array_equal(mask_to_boxes(m, mode="components", dilation_px=1)[1], [2, 1, 7, 5])
    with pytest.raises(ValueError, match="dilation"):
        mask_to_boxes(m, dilation_px=-1)


def test_sample_points_lie_inside_and_are_distinct():
    m = np.zeros((15, 15), dtype=bool)
    m[4:7, 9:12] = True
    pts = sample_points(m, 5, seed=1)
    assert pts.shape == (5, 2)
    assert m[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()
    assert len({tuple(p) for p in pts}) == 5
    assert sample_points(m, 100).shape == (9, 2)  # capped at the foreground size
    assert sample_points(np.zeros((3, 3), bool), 4).shape == (0, 2)


def test_scale_boxes_about_the_centre_closed_form():
    box = np.array([[10, 20, 19, 29]])  # 10 x 10 px
    np.testing.assert_array_equal(scale_boxes(box, 2.0, (64, 64)), [[5, 15, 24, 34]])  # 20 x 20
    np.testing.assert_array_equal(scale_boxes(box, 1.5, (64, 64)), [[7, 17, 22, 32]])  # 2.5 out
    # a 4 x 2 box grows by its own size: 1 and 0.5 px per side, not by a fixed amount
    np.testing.assert_array_equal(scale_boxes(np.array([[30, 30, 33, 31]]), 1.5, (64, 64)),
                                  [[29, 29, 34, 32]])
    # clipped to the image (W = 32, H = 24), scale 1 returns the boxes unchanged
    np.testing.assert_array_equal(scale_boxes(np.array([[0, 0, 9, 19]]), 3.0, (24, 32)),
                                  [[0, 0, 19, 23]])
    np.testing.assert_array_equal(scale_boxes(box, 1.0, (64, 64)), box)
    assert scale_boxes(np.zeros((0, 4)), 2.0, (8, 8)).shape == (0, 4)
    with pytest.raises(ValueError, match="> 0"):
        scale_boxes(box, 0.0, (64, 64))
