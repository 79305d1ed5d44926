"""Reference-model training samples: photometric augmentation and the auxiliary anatomy cache."""

import numpy as np
import pytest

from generator.data import (
    DataConfig,
    ReferenceDataset,
    RegionWeights,
    aux_records,
    load_records,
    photometric,
)

from .conftest import toy_pair


def test_photometric_is_one_map_applied_to_input_and_target():
    image, mask = toy_pair(32, 32)
    target = np.where(mask, 0.45, image).astype(np.float32)  # the lesion-free twin
    cfg = DataConfig(contrast_range=(0.5, 0.5), gamma_range=(2.0, 2.0), blur_p=0.0)
    new_image, new_target = photometric(image, target, mask, cfg, np.random.default_rng(0))
    m = float(target.mean())
    expected = np.clip(m + 0.5 * (target - m), 0, 1) ** 2  # closed form, no blur
    np.testing.assert_allclose(new_target, expected, rtol=1e-6)
    np.testing.assert_allclose(new_image[mask], (np.clip(m + 0.5 * (image - m), 0, 1) ** 2)[mask],
                               rtol=1e-6)
    np.testing.assert_array_equal(new_image[~mask], new_target[~mask])
    # Lower contrast lowers the texture amplitude the model is asked to produce.
    assert new_target.std() < target.std()


def test_photometric_blur_keeps_the_context_consistent():
    image, mask = toy_pair(32, 32)
    target = np.where(mask, 0.45, image).astype(np.float32)
    cfg = DataConfig(contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), blur_p=1.0, blur_sigma=(1.0, 1.0))
    new_image, new_target = photometric(image, target, mask, cfg, np.random.default_rng(0))
    from scipy import ndimage

    np.testing.assert_allclose(new_target, ndimage.gaussian_filter(target, 1.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_image[~mask], new_target[~mask])  # no lesion halo outside


def test_dataset_applies_augmentation_only_at_the_configured_rate(small_bench):
    recs = load_records(small_bench, domains=("breast_us",), split="train")
    plain = ReferenceDataset(recs, DataConfig(augment=False), RegionWeights(), seed=0)
    aug = ReferenceDataset(recs, DataConfig(augment=False, photometric_p=1.0, blur_p=0.0),
                           RegionWeights(), seed=0)
    a, b = plain[0], aug[0]
    assert not np.allclose(a["target"].numpy(), b["target"].numpy())
    off = ReferenceDataset(recs, DataConfig(augment=False, photometric_p=0.0), RegionWeights(), seed=0)
    np.testing.assert_array_equal(off[0]["target"].numpy(), a["target"].numpy())


def test_aux_records_are_cached_lesion_free_crops(tmp_path, monkeypatch):
    import shared.benchmark.anatomy as anatomy

    calls = []

    def fake(names, n, size, *, seed):
        calls.append((names, n, size, seed))
        rng = np.random.default_rng(seed)
        return [(rng.random((size, size)).astype(np.float32), np.ones((size, size), bool))
                for _ in range(n * len(names))]

    monkeypatch.setattr(anatomy, "aux_healthy_images", fake)
    cfg = DataConfig(root=str(tmp_path), aux_healthy=("extremity_xray",), aux_per_source=3)
    first = aux_records(cfg, 16, seed=1)
    second = aux_records(cfg, 16, seed=1)  # from the cache: no second draw
    assert len(calls) == 1 and len(first) == 3
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert not a.mask.any() and a.gt_negative is None
    assert aux_records(DataConfig(root=str(tmp_path)), 16) == []


def test_aux_sources_are_real_anatomy_and_reject_unknown_names():
    from shared.benchmark.anatomy import aux_healthy_images

    with pytest.raises(ValueError, match="unknown auxiliary anatomy"):
        aux_healthy_images(("chest_xray",), 1, 32, seed=0)
    names = ("extremity_xray", "abdomen_ct", "natural_images")
    draws = aux_healthy_images(names, 2, 32, seed=0)
    assert len(draws) == 6
    for img, tissue in draws:
        assert img.shape == (32, 32) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        assert tissue.any() and img.std() > 0.02  # a crop of the body / photo, not of empty frame
    again = aux_healthy_images(names, 2, 32, seed=0)
    for (a, _), (b, _) in zip(draws, again, strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic per seed
