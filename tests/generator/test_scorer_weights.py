"""The committed scorers (generator/weights/scorers) on fresh benchmark draws.

The scorers were trained on every benchmark domain except ``chest_xray``. Each test builds new
items with a seed the committed benchmark did not use and checks that the lesion scorers learned
the lesion, not the majority class: positives outscore their own lesion-free GT negatives.
On the held-out chest_xray domain they are nowhere near that level (measured: every image, with
or without its lesion, scored ≈0.98; pairs ranked right 0.45-0.63 by the lesion scorer and 0.46
by the audit one): that test is a strict xfail, so it fails loudly the day that changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.scoring import SCORERS_DIR, load_scorers, prepare

pytestmark = pytest.mark.skipif(
    not (SCORERS_DIR / "lesion.safetensors").is_file(),
    reason="no embedded scorers committed yet (python -m generator.train_scorers)",
)


def _fresh_pairs(tmp_path_factory, domain: str):
    from shared.benchmark import build_benchmark, load_manifest
    from shared.io import read_image

    out = tmp_path_factory.mktemp(domain)
    build_benchmark(out, domains=(domain,), n_per_domain=24, size=64, seed=1234)
    items = [it for it in load_manifest(out) if it.label == "tumor"]
    return [read_image(it.image) for it in items], [read_image(it.gt_negative) for it in items]


def _rate(model, pos, neg) -> tuple[float, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        a = model(prepare(pos, None, model.cfg.resolution))
        b = model(prepare(neg, None, model.cfg.resolution))
    assert np.isfinite(a.numpy()).all() and np.isfinite(b.numpy()).all()
    return (a > b).float().mean().item(), a, b


@pytest.mark.parametrize("domain", ["brain_mri", "breast_us"])
@pytest.mark.parametrize("name", ["lesion", "audit"])
def test_scorers_rank_positives_above_gt_negatives_on_new_draws(tmp_path_factory, domain, name):
    rate, a, b = _rate(getattr(load_scorers(), name), *_fresh_pairs(tmp_path_factory, domain))
    # a scorer collapsed to a constant gives a == b (rate 0); chance is 0.5; measured 0.95-1.0
    assert rate >= 0.8
    assert a.mean() > b.mean()


@pytest.mark.xfail(strict=True, reason="the scorers do not generalise to the held-out domain")
@pytest.mark.parametrize("name", ["lesion", "audit"])
def test_scorers_on_held_out_chest_xray(tmp_path_factory, name):
    rate, _, _ = _rate(getattr(load_scorers(), name), *_fresh_pairs(tmp_path_factory, "chest_xray"))
    assert rate >= 0.8  # the level the training domains reach
