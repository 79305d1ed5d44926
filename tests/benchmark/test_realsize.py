"""Real-size benchmark items (shared.benchmark.realsize): exact GT, lesion size, crops, determinism."""

import numpy as np
import pytest

from shared.benchmark.realsize import AREA_RANGE, build_realsize
from shared.benchmark.sources import HELD_OUT, SOURCES, frames


@pytest.fixture(scope="module")
def ct_items():
    """A held-out source whose 512² frame is larger than the 256² crop: native crops."""
    return build_realsize("abdomen_ct", 256, 30, seed=0)


@pytest.fixture(scope="module")
def emri_items():
    """A held-out source with 64² frames: upsampled to 128²."""
    return build_realsize("emri_head_mr", 128, 6, seed=0)


def test_sources_are_held_out():
    assert "abdomen_ct" in HELD_OUT and "emri_head_mr" in HELD_OUT
    assert SOURCES["abdomen_ct"].held_out and SOURCES["emri_head_mr"].held_out


@pytest.mark.parametrize("name", ["ct_items", "emri_items"])
def test_gt_negative_equals_positive_outside_mask_and_differs_inside(name, request):
    for it in request.getfixturevalue(name):
        assert it.image.dtype == np.float32 and it.gt_negative.dtype == np.float32
        assert it.mask.dtype == bool and it.mask.any()
        np.testing.assert_array_equal(it.image[~it.mask], it.gt_negative[~it.mask])
        assert np.abs(it.image[it.mask] - it.gt_negative[it.mask]).mean() > 0.01
        assert 0.0 <= it.image.min() and it.image.max() <= 1.0


@pytest.mark.parametrize("name", ["ct_items", "emri_items"])
def test_lesion_area_in_range_matches_mask_and_lies_inside(name, request):
    items = request.getfixturevalue(name)
    for it in items:
        assert AREA_RANGE[0] <= it.area_fraction <= AREA_RANGE[1]
        assert it.mask.mean() == pytest.approx(it.area_fraction, rel=0.25, abs=4 / it.mask.size)
        edge = np.concatenate([it.mask[0], it.mask[-1], it.mask[:, 0], it.mask[:, -1]])
        assert not edge.any()  # the whole lesion lies inside the image
        cy, cx = round(it.lesion.cy * it.mask.shape[0]), round(it.lesion.cx * it.mask.shape[1])
        assert it.tissue[cy, cx] and it.mask[cy, cx]  # centred on tissue
    # sizes spread over the log range, not one preset radius
    areas = np.array([it.area_fraction for it in items])
    assert areas.max() / areas.min() > 3


def test_lesions_avoid_clipped_gas_and_bone(ct_items):
    # the soft-tissue window clips bowel gas to 0 and bone to 1; a lesion there has a flat GT
    for it in ct_items:
        under = it.gt_negative[it.mask]
        assert np.mean((under <= 0.0) | (under >= 1.0)) < 0.5
        assert under.std() > 0.005


def test_native_crop_is_an_exact_block_of_the_frame(ct_items):
    for it in ct_items:
        frame = frames("abdomen_ct")[it.frame][0]
        top, left, side = it.box
        assert it.scale == 1.0 and side == 256 and it.image.shape == (256, 256)
        np.testing.assert_array_equal(it.gt_negative, frame[top : top + side, left : left + side])
    assert len({it.box for it in ct_items}) > 1  # crops move with the tissue pixel drawn


def test_small_frame_is_upsampled_with_its_scale(emri_items):
    for it in emri_items:
        assert it.image.shape == (128, 128) and it.scale == pytest.approx(64 / 128)
        top, left, side = it.box
        native = frames("emri_head_mr")[it.frame][0][top : top + side, left : left + side]
        assert side == 64
        # the upsampled crop averages back to the native frame (2×2 blocks), up to interpolation
        down = it.gt_negative.reshape(64, 2, 64, 2).mean(axis=(1, 3))
        assert np.abs(down - native).mean() < 0.03


def test_same_seed_same_items_other_seed_differs():
    a = build_realsize("pelvis_us", 128, 3, seed=5)
    b = build_realsize("pelvis_us", 128, 3, seed=5)
    c = build_realsize("pelvis_us", 128, 3, seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
        np.testing.assert_array_equal(x.gt_negative, y.gt_negative)
        assert x.area_fraction == y.area_fraction
    assert not all(np.array_equal(x.image, z.image) for x, z in zip(a, c, strict=True))
    # item i does not depend on n
    np.testing.assert_array_equal(build_realsize("pelvis_us", 128, 1, seed=5)[0].image, a[0].image)


def test_preset_follows_modality_and_photo_is_refused():
    assert build_realsize("abdomen_ct", 64, 1)[0].preset == "brain_mri"
    assert build_realsize("chest_xray", 64, 1)[0].preset == "chest_xray"
    assert build_realsize("pelvis_us", 64, 1)[0].preset == "breast_us"
    with pytest.raises(ValueError, match="no lesion preset"):
        build_realsize("natural_images", 64, 1)
    with pytest.raises(ValueError, match="unknown"):
        build_realsize("nope", 64, 1)


def test_dipy_head_mr_sources_are_whole_brain_slices_held_out_of_training():
    """dipy's bundled head MR (session 33): 10 axial T2 slices at 128² and one T1 coronal slice at
    256², skull-stripped; the lesion map covers the brain, not the black background around it,
    and training refuses both sources."""
    from shared.benchmark.sources import check_training_sources

    t2, t1 = frames("dipy_t2_head"), frames("dipy_t1_coronal")
    assert len(t2) == 10 and all(img.shape == (128, 128) for img, _ in t2)
    assert len(t1) == 1 and t1[0][0].shape == (256, 256)
    for img, tissue in t2 + t1:
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() == 1.0
        assert 0.15 < tissue.mean() < 0.6  # a brain, not the frame
        assert np.median(img[tissue]) > 5 * np.median(img[~tissue]) + 0.02  # tissue is the bright part
    # anterior at the top: the axial slices' brain is taller than wide (rot90 applied once)
    rows, cols = np.nonzero(t2[5][1])
    assert np.ptp(rows) > np.ptp(cols)
    for name in ("dipy_t2_head", "dipy_t1_coronal"):
        assert SOURCES[name].held_out and name in HELD_OUT
        with pytest.raises(ValueError, match="held-out"):
            check_training_sources((name,))
    for it in build_realsize("dipy_t2_head", 256, 3, seed=0):  # upsampled ×2, exact GT off the mask
        np.testing.assert_array_equal(it.image[~it.mask], it.gt_negative[~it.mask])
