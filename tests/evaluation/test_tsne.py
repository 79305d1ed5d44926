import numpy as np
import pytest

from finetune.evaluation.clip_bundle import preprocess
from finetune.evaluation.tsne import (
    DegenerateFeaturesError,
    _mask_fractions,
    feature_analysis,
    patch_features,
    tsne_silhouette,
)
from tests.evaluation.conftest import blob_image


def test_mask_fractions_follow_the_image_placement(tiny_clip):
    # 32x64 image -> pad mode: content rows 8..23 of the 32x32 input; grid 4x4 of 8x8 patches
    mask = np.zeros((32, 64), dtype=bool)
    mask[:, 32:] = True  # right half
    _, (placement,) = preprocess(tiny_clip, [np.zeros((32, 64), np.float32)])
    frac = _mask_fractions(mask, tiny_clip, placement).reshape(4, 4)
    np.testing.assert_allclose(frac[0], 0)  # padding row: no mask
    np.testing.assert_allclose(frac[1:3, :2], 0)
    np.testing.assert_allclose(frac[1:3, 2:], 1)


def test_silhouette_separates_clusters_and_png(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (30, 8)) + np.eye(8)[0]
    b = rng.normal(0, 0.1, (30, 8)) + np.eye(8)[1]
    res = tsne_silhouette(np.concatenate([a, b]), np.array([0] * 30 + [1] * 30), path=tmp_path / "t.png", max_iter=250)
    assert res["silhouette_features"] > 0.5 and res["silhouette_tsne"] > 0.5
    assert (tmp_path / "t.png").stat().st_size > 1000
    mixed = tsne_silhouette(np.concatenate([a, a]), np.array([0] * 30 + [1] * 30), max_iter=250)
    assert abs(mixed["silhouette_features"]) < 0.1
    with pytest.raises(ValueError, match="two classes"):
        tsne_silhouette(a, np.zeros(30))


def test_feature_analysis_end_to_end(tiny_clip, tmp_path):
    pos = [blob_image(i, (40, 40)) for i in range(6)]
    neg = [blob_image(20 + i, (40, 40))[0] * 0 + 0.3 for i in range(6)]
    x, y = patch_features(tiny_clip, [p[0] for p in pos], [p[1] for p in pos], tumor_fraction=0.5)
    assert x.shape[1] == 32 and set(np.unique(y)) == {0, 1}
    report = feature_analysis({"before": tiny_clip, "after": tiny_clip}, [p[0] for p in pos],
                              [p[1] for p in pos], neg, tmp_path, max_iter=250,
                              max_patches_per_class=40)
    assert report["before"] == report["after"]  # same model, same seed -> same numbers
    assert sorted(f.name for f in tmp_path.glob("*.png")) == [
        "tsne_after_images.png", "tsne_after_patches.png", "tsne_before_images.png", "tsne_before_patches.png"]


def test_identical_or_non_finite_features_are_refused_not_embedded():
    """sklearn's Barnes-Hut t-SNE can crash the process (segfault) on identical features, e.g.
    one image under several masks; they are refused with an error the caller reports."""
    same = np.ones((12, 8), np.float32)
    labels = np.array([0, 1] * 6)
    with pytest.raises(DegenerateFeaturesError, match="identical or non-finite"):
        tsne_silhouette(same, labels)
    nan = np.random.default_rng(0).random((12, 8)).astype(np.float32)
    nan[3, 2] = np.nan
    with pytest.raises(DegenerateFeaturesError):
        tsne_silhouette(nan, labels)


def test_feature_analysis_reports_a_degenerate_set_as_skipped(tiny_clip, tmp_path):
    image, mask = blob_image(3, (32, 32))
    report = feature_analysis({"model": tiny_clip}, [image, image], [mask, mask], [image, image],
                              tmp_path, max_iter=250)
    assert "skipped" in report["model"]["images"]  # four identical images: one embedding
