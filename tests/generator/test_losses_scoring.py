import numpy as np
import pytest
import torch

from generator.losses import reference_loss
from generator.masks import dilate
from generator.modeling.scorers import build_scorer
from generator.scoring import (
    load_scorers,
    outside_max_abs_diff,
    prepare,
    ranking_score,
    save_scorers,
    score_negatives,
    scorer_flags,
    scores_with_gt,
    texture_ratio_ring,
)

from .conftest import toy_pair


def test_reference_loss_is_weighted_mean_of_squared_error():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    weight = torch.tensor([[[[1.0, 0.0], [0.05, 1.0]]]])
    expected = (1 * 1 + 0.05 * 9 + 1 * 16) / 2.05
    torch.testing.assert_close(reference_loss(pred, target, weight), torch.tensor(expected))
    torch.testing.assert_close(reference_loss(pred, target, torch.zeros_like(weight)), torch.tensor(0.0))
    with pytest.raises(ValueError, match="pred is"):
        reference_loss(pred, target[..., :1], weight)


def test_scores_with_gt_closed_forms():
    image, mask = toy_pair()
    region = dilate(mask, 2)
    gt = image.copy()
    gt[region] = 0.5
    perfect = scores_with_gt(gt, gt, image, region)
    assert perfect["psnr"] == float("inf") and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["texture_ratio_gt"] == pytest.approx(1.0)
    off = gt.copy()
    off[region] += 0.1
    s = scores_with_gt(off, gt, image, region)
    assert s["mse"] == pytest.approx(0.01, rel=1e-4) and s["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert s["outside_max_abs_diff"] == 0.0
    bad = off.copy()
    bad[~region] += 0.25
    assert outside_max_abs_diff(bad, image, region) == pytest.approx(0.25, abs=1e-6)


def test_texture_ratio_ring_separates_smooth_from_textured_fill():
    rng = np.random.default_rng(0)
    image = (0.5 + 0.1 * rng.standard_normal((48, 48))).clip(0, 1).astype(np.float32)
    region = np.zeros((48, 48), bool)
    region[16:32, 16:32] = True
    smooth = np.where(region, 0.5, image).astype(np.float32)
    assert texture_ratio_ring(smooth, image, region) < 0.1
    assert texture_ratio_ring(image, image, region) == pytest.approx(1.0, abs=0.3)


def test_scorers_round_trip_and_ranking(tmp_path):
    torch.manual_seed(0)
    models = {k: build_scorer(k).eval() for k in ("lesion", "audit", "fill")}
    save_scorers(tmp_path, models, {"note": "random"})
    loaded = load_scorers(tmp_path)
    image, mask = toy_pair(64, 64)
    region = dilate(mask, 2)
    probs = loaded.probabilities([image], [region])
    for k in ("lesion", "audit"):
        x = prepare([image], [region] if models[k].cfg.in_channels == 2 else None,
                    models[k].cfg.resolution)
        ref = torch.sigmoid(models[k].half().float()(x)).item()
        assert probs[k][0] == pytest.approx(ref, abs=1e-5)
    assert {k: m.cfg for k, m in loaded.__dict__.items() if k in models} == {
        k: m.cfg for k, m in models.items()}  # configs stored in scorers.json and used to load
    s = score_negatives(loaded, [image], [image], [region], [image])[0]
    assert {"lesion_prob", "audit_prob", "fill_prob", "psnr"} <= set(s)
    assert ranking_score({**s, "outside_max_abs_diff": 0.1}) == float("-inf")
    better = {**s, "lesion_prob": 0.0}
    assert ranking_score(better) > ranking_score({**s, "lesion_prob": 1.0})


def test_scorer_flags_thresholds_and_two_alternative_choice():
    probs = {"lesion": np.array([0.2, 0.5, 0.9]), "audit": np.array([0.7, 0.1, 0.5]),
             "fill": np.array([0.6, 0.3, 0.5])}
    flags = scorer_flags(probs, fill_gt=np.array([0.4, 0.3, 0.8]))
    assert [f["lesion_flip"] for f in flags] == [1.0, 0.0, 0.0]  # lesion gone: p < 0.5
    assert [f["audit_flip"] for f in flags] == [0.0, 1.0, 0.0]
    assert [f["fill_detected"] for f in flags] == [1.0, 0.0, 1.0]  # p >= 0.5
    assert [f["fill_above_gt"] for f in flags] == [1.0, 0.5, 0.0]  # a tie counts half
