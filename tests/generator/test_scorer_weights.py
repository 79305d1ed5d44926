"""The committed scorers (generator/weights/scorers) on fresh benchmark draws.

The scorers were trained on every benchmark domain except ``chest_xray``. Each test builds new
items with a seed the committed benchmark did not use and checks that the region-conditioned
lesion scorers learned the lesion: with the region = lesion mask dilated by 2 px, positives
outscore their own lesion-free GT negatives, on training domains and on the held-out chest_xray
(the whole-image scorers committed before gave every chest image ≈0.98 and ranked 0.45 of the
pairs right; the region-conditioned ones 0.73-0.78, held to ≥ 0.7 here). ``NEGCLIP_SCORERS_DIR`` points the tests at other weights (e.g. a fresh
``runs/scorers_v2``). Weights saved without "scorer_configs" in scorers.json predate the
region-conditioned scorers: skipped until they are retrained and installed
(``python -m generator.train_scorers --config configs/generator/scorers.yaml``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.masks import dilate
from generator.scoring import SCORERS_DIR, load_scorers, scorer_logits

WEIGHTS = Path(os.environ.get("NEGCLIP_SCORERS_DIR", SCORERS_DIR))


def _has_configs() -> bool:
    meta = WEIGHTS / "scorers.json"
    return meta.is_file() and "scorer_configs" in json.loads(meta.read_text())


pytestmark = [
    pytest.mark.skipif(not (WEIGHTS / "lesion.safetensors").is_file(),
                       reason="no embedded scorers committed yet (python -m generator.train_scorers)"),
    pytest.mark.skipif((WEIGHTS / "lesion.safetensors").is_file() and not _has_configs(),
                       reason="committed scorers predate the region-conditioned architecture: "
                              "retrain with python -m generator.train_scorers"),
]


def _fresh_pairs(tmp_path_factory, domain: str):
    from shared.benchmark import build_benchmark, load_manifest
    from shared.io import read_image, read_mask

    out = tmp_path_factory.mktemp(domain)
    build_benchmark(out, domains=(domain,), n_per_domain=24, size=64, seed=1234)
    items = [it for it in load_manifest(out) if it.label == "tumor"]
    return ([read_image(it.image) for it in items], [read_image(it.gt_negative) for it in items],
            [dilate(read_mask(it.mask), 2) for it in items])


def _rate(model, pos, neg, regions) -> tuple[float, torch.Tensor, torch.Tensor]:
    a, b = scorer_logits(model, pos, regions), scorer_logits(model, neg, regions)
    assert np.isfinite(a.numpy()).all() and np.isfinite(b.numpy()).all()
    return (a > b).float().mean().item(), a, b


# Held-out chest_xray: measured 0.73-0.78 on the benchmark's test split (60 pairs) and 0.79 /
# 0.83 (lesion / audit) on the 24 fresh pairs below; chance is 0.5, the whole-image scorers
# committed before this design ranked 0.45. The bar there is "clearly above chance".
MIN_RATE = {"brain_mri": 0.8, "breast_us": 0.8, "chest_xray": 0.7}


@pytest.mark.parametrize("domain", ["brain_mri", "breast_us", "chest_xray"])
@pytest.mark.parametrize("name", ["lesion", "audit"])
def test_scorers_rank_positives_above_gt_negatives_on_new_draws(tmp_path_factory, domain, name):
    model = getattr(load_scorers(WEIGHTS), name)
    assert model.cfg.in_channels == 2
    rate, a, b = _rate(model, *_fresh_pairs(tmp_path_factory, domain))
    # a scorer collapsed to a constant gives a == b (rate 0); chance is 0.5
    assert rate >= MIN_RATE[domain], f"{name} ranks {rate:.2f} of {domain} pairs right"
    assert a.mean() > b.mean()


def _biharmonic(images, regions) -> list[np.ndarray]:
    from skimage.restoration import inpaint_biharmonic

    return [np.where(r, inpaint_biharmonic(im, r), im).astype(np.float32)
            for im, r in zip(images, regions, strict=True)]


# The fill detector on fresh draws: a biharmonic fill of the region should score above the GT
# negative's real tissue in the same region. Measured 1.00 / 1.00 / 0.75 (brain / breast /
# held-out chest, 24 pairs each). On chest the detector calls most real tissue a fill too (0.83
# of GT negatives at p >= 0.5), but its ordering still separates the two (a ring-standardised,
# region-pooled variant tried in session 4 ordered these chest pairs worse and was not adopted).
MIN_FILL_RATE = {"brain_mri": 0.9, "breast_us": 0.9, "chest_xray": 0.65}


@pytest.mark.parametrize("domain", ["brain_mri", "breast_us", "chest_xray"])
def test_fill_detector_scores_biharmonic_fills_above_real_tissue(tmp_path_factory, domain):
    model = load_scorers(WEIGHTS).fill
    _, real, regions = _fresh_pairs(tmp_path_factory, domain)
    rate, a, b = _rate(model, _biharmonic(real, regions), real, regions)
    assert rate >= MIN_FILL_RATE[domain], f"fill detector ranks {rate:.2f} of {domain} pairs right"
