"""Scorer training loss (closed forms) and the max-pooled scorer head."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from generator.modeling.scorers import build_scorer
from generator.train_scorers import scorer_loss


def test_scorer_loss_closed_forms():
    zeros = torch.zeros(3, 4, 4)
    target = torch.zeros(3, 4, 4)
    target[0, 1, 2] = 1
    labels = torch.tensor([1.0, 0.0, 0.0])
    # all-zero logits: BCE = log 2 for every cell and every image
    assert_close(scorer_loss(zeros, target, labels), torch.tensor(2 * math.log(2)))
    # confident, correct map: both terms vanish
    perfect = torch.where(target > 0, 30.0, -30.0)
    assert scorer_loss(perfect, target, labels) < 1e-10
    # a wrong cell on a negative image raises both terms
    wrong = perfect.clone()
    wrong[2, 0, 0] = 30.0
    assert scorer_loss(wrong, target, labels) > 30 * (1 / 48 + 1 / 3) - 1e-3


def test_scorer_logit_is_max_of_map():
    torch.manual_seed(0)
    for kind in ("lesion", "audit", "fill"):
        model = build_scorer(kind).eval()
        r = model.cfg.resolution
        x = torch.rand(2, model.cfg.in_channels, r, r)
        with torch.no_grad():
            m = model.logit_map(x)
            assert_close(model(x), m.amax((1, 2)))
        assert m.shape[0] == 2 and m.shape[1] == r // 2 ** len(model.cfg.widths) + (
            r % 2 ** len(model.cfg.widths) > 0)
