"""Losses against closed forms, hand-written loops and POT."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from finetune.losses import (
    attention_entropy,
    clip_dpo,
    collapse_monitors,
    dhn_nce,
    dhn_nce_upstream,
    stage1,
    stage2,
)
from finetune.ot import entropic_ot, pairwise_cost, sinkhorn_divergence
from finetune.patch_losses import patch_soft_mask, spatial_cross_entropy


def _example(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=torch.float64),
            torch.randn(b, d, generator=g, dtype=torch.float64))


def _cos(img, txt):
    s = np.zeros((len(img), len(txt)))
    for i, x in enumerate(img):
        for j, y in enumerate(txt):
            s[i, j] = float(x @ y) / (float(x.norm()) * float(y.norm()))
    return s


def test_dhn_nce_equals_formula_by_hand():
    img, txt = _example()
    tau, b1, b2 = 0.6, 0.15, 0.3
    s = _cos(img, txt)
    b = 6

    def direction(sim, beta):
        total = 0.0
        for i in range(b):
            norm = sum(math.exp(beta * sim[i, k] / tau) for k in range(b) if k != i)
            denom = sum((b - 1) * math.exp(beta * sim[i, j] / tau) / norm * math.exp(sim[i, j] / tau)
                        for j in range(b) if j != i)
            total += -math.log(math.exp(sim[i, i] / tau) / denom)
        return total / b

    out = dhn_nce(img, txt, temperature=tau, beta1=b1, beta2=b2)
    torch.testing.assert_close(out["loss_v2t"], torch.tensor(direction(s, b1), dtype=torch.float64))
    torch.testing.assert_close(out["loss_t2v"], torch.tensor(direction(s.T, b2), dtype=torch.float64))
    torch.testing.assert_close(out["loss"], out["loss_v2t"] + out["loss_t2v"])


def test_dhn_nce_without_hardness_is_decoupled_infonce():
    img, txt = _example(seed=1)
    s = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T / 0.5
    off = ~torch.eye(6, dtype=torch.bool)
    expected = (torch.logsumexp(s.masked_fill(~off, -torch.inf), 1) - s.diagonal()).mean()
    out = dhn_nce(img, txt, temperature=0.5, beta1=0.0, beta2=0.0)
    torch.testing.assert_close(out["loss_v2t"], expected)


def test_dhn_nce_upstream_equals_shipped_semantics_by_hand():
    img, txt = _example(seed=2)
    tau, b1, b2, alpha, n = 0.6, 0.15, 0.15, 0.0, 5
    s = _cos(img, txt) / tau  # logits_per_image; logits_per_text = its transpose

    def neg(L, beta):
        # norm_term = row sums of exp(L * neg_mask): the diagonal contributes exp(0) = 1
        norm = [sum(math.exp(L[r, k]) if r != k else 1.0 for k in range(6)) for r in range(6)]
        out = np.zeros((6, 6))
        for i in range(6):
            for j in range(6):
                masked = L[i, j] if i != j else 0.0
                out[i, j] = n * math.exp(beta * masked) / norm[j] * math.exp(masked)  # norm[j]!
        return out

    ni, nt = neg(s, b1), neg(s.T, b2)
    total = 0.0
    for i in range(6):
        for j in range(6):
            pos = math.exp(s[i, j]) if i == j else 1.0
            total += -math.log(pos / (alpha * pos + ni[i, j])) - math.log(pos / (alpha * pos + nt[i, j]))
    got = dhn_nce_upstream(img, txt, temperature=tau, beta1=b1, beta2=b2, alpha=alpha)["loss"]
    torch.testing.assert_close(got, torch.tensor(total / 36, dtype=torch.float64))
    assert abs(float(got) - float(dhn_nce(img, txt)["loss"])) > 0.5  # a different quantity


def test_dhn_nce_gradients_and_errors():
    img, txt = _example()
    img.requires_grad_(True)
    dhn_nce(img, txt)["loss"].backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        dhn_nce(torch.randn(4, 3), torch.randn(4, 2))


def _measures(seed=0, n=12, m=12, zeros=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, 6, generator=g, dtype=torch.float64)
    y = torch.randn(3, m, 6, generator=g, dtype=torch.float64)
    a = torch.rand(3, n, generator=g, dtype=torch.float64)
    a[:, :zeros] = 0.0  # patches outside the tumor carry no mass
    b = torch.rand(3, m, generator=g, dtype=torch.float64)
    return x, y, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


@pytest.mark.parametrize("solver", ["ours", "pot"])
def test_entropic_ot_matches_pot_sinkhorn2(solver):
    x, y, a, b = _measures()
    cost = pairwise_cost(x, y)
    res = entropic_ot(cost, a, b, eps=0.1, n_iter=300, solver=solver)
    for i in range(3):
        ref = ot.sinkhorn2(a[i].numpy(), b[i].numpy(), cost[i].numpy(), 0.1,
                           method="sinkhorn_log", numItermax=10000, stopThr=1e-12)
        assert abs(float(res["value_linear"][i]) - float(ref)) < 1e-4
    torch.testing.assert_close(res["plan"].sum(2), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(res["plan"].sum(1), b, atol=1e-6, rtol=0)


def test_envelope_gradient_matches_finite_differences():
    x, y, a, b = _measures(seed=3)
    cost = pairwise_cost(x, y).requires_grad_(True)
    value = entropic_ot(cost, a, b, eps=0.2, n_iter=500)["value"]
    value.sum().backward()
    direction = torch.randn_like(cost)
    h = 1e-5
    with torch.no_grad():
        up = entropic_ot(cost + h * direction, a, b, eps=0.2, n_iter=500)["value"]
        down = entropic_ot(cost - h * direction, a, b, eps=0.2, n_iter=500)["value"]
    fd = (up - down) / (2 * h)
    torch.testing.assert_close((cost.grad * direction).sum((1, 2)), fd, atol=1e-6, rtol=1e-5)


def test_sinkhorn_divergence_zero_on_itself_positive_otherwise_finite_gradients():
    x, y, a, b = _measures(seed=4)
    torch.testing.assert_close(sinkhorn_divergence(x, x, a, a, n_iter=200),
                               torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    xg = x.clone().requires_grad_(True)
    div = sinkhorn_divergence(xg, y, a, b, n_iter=200)
    assert bool((div > 0).all())
    div.sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    ours = sinkhorn_divergence(x, y, a, b, n_iter=2000)
    pot_div = sinkhorn_divergence(x, y, a, b, n_iter=2000, solver="pot")
    torch.testing.assert_close(pot_div, ours, atol=1e-5, rtol=0)


def test_clip_dpo_is_log2_when_policy_is_reference():
    g = torch.Generator().manual_seed(0)
    emb = [torch.randn(4, 8, generator=g) for _ in range(4)]
    out = clip_dpo(*emb, *[e.clone() for e in emb], beta=10.0, kl_weight=1.0)
    torch.testing.assert_close(out["loss"], torch.tensor(math.log(2)))
    torch.testing.assert_close(out["kl_loss"], torch.tensor(0.0), atol=1e-7, rtol=0)
    better = clip_dpo(emb[1], emb[1], *emb[2:], *emb, beta=10.0)  # policy matches its positives
    assert float(better["loss"]) < math.log(2) and float(better["accuracy"]) == 1.0


def test_attention_entropy_closed_forms():
    uniform = torch.full((2, 3, 5, 5), 0.2)
    onehot = F.one_hot(torch.zeros(2, 3, 5, dtype=torch.long), 5).float()
    torch.testing.assert_close(attention_entropy(uniform)["loss"], torch.tensor(1.0))
    torch.testing.assert_close(attention_entropy(onehot)["loss"], torch.tensor(0.0))
    torch.testing.assert_close(attention_entropy([uniform, onehot], mode="maximize")["loss"],
                               torch.tensor(-0.5))
    torch.testing.assert_close(attention_entropy(onehot, mode="hinge", h_min=0.3)["loss"],
                               torch.tensor(0.3))
    torch.testing.assert_close(attention_entropy(uniform, mode="hinge", h_min=0.3)["loss"],
                               torch.tensor(0.0))
    half = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(1, 1, 4, 4)
    torch.testing.assert_close(attention_entropy(half, queries="all")["entropy"],
                               torch.tensor(math.log(2) / math.log(4)))


def test_patch_soft_mask_area_fractions():
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, :8, :16] = True  # top-left patch fully, top-right untouched
    mask[0, 16:20, 16:32] = True  # bottom-right quarter covered
    torch.testing.assert_close(patch_soft_mask(mask, (2, 2)),
                               torch.tensor([[0.5, 0.0, 0.0, 0.25]]))


def test_stage1_identical_views_have_zero_ot_and_closed_form_contrastive():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 9, dtype=torch.float64)
    mask[:, :3] = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    out = stage1(tokens, tokens, mask, mask, n_iter=200, temperature=0.2)
    torch.testing.assert_close(out["ot_loss"], torch.tensor(0.0, dtype=torch.float64),
                               atol=1e-10, rtol=0)
    expected = 0.0
    for i in range(2):
        p = F.normalize((mask[i, :, None] * tokens[i]).sum(0) / mask[i].sum(), dim=0)
        logits = [1.0 / 0.2] + [float(p @ F.normalize(tokens[i, n], dim=0)) / 0.2 for n in range(3, 9)]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    torch.testing.assert_close(out["contrastive_loss"], torch.tensor(expected / 2, dtype=torch.float64))


def test_stage1_gradients_and_tumor_free_pairs():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 16, 8, generator=g).requires_grad_(True)
    b = torch.randn(3, 16, 8, generator=g)
    ma = torch.rand(3, 16, generator=g) * (torch.rand(3, 16, generator=g) > 0.6)
    mb = torch.rand(3, 16, generator=g) * (torch.rand(3, 16, generator=g) > 0.6)
    ma[2] = 0.0  # no tumor: this pair is skipped
    out = stage1(a, b, ma, mb)
    out["loss"].backward()
    assert int(out["valid_pairs"]) == 2 and float(out["ot_loss"].detach()) > 0
    assert torch.isfinite(a.grad).all() and a.grad[:2].abs().sum() > 0
    assert float(a.grad[2].abs().sum()) == 0.0
    empty = stage1(a, b, torch.zeros(3, 16), mb)
    assert float(empty["loss"].detach()) == 0.0 and empty["loss"].requires_grad


def test_stage2_closed_form():
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(1, 4, 3, generator=g, dtype=torch.float64)
    neg = torch.randn(1, 4, 3, generator=g, dtype=torch.float64)
    m = torch.tensor([[1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    pe, ne = torch.randn(1, 5, generator=g, dtype=torch.float64), torch.randn(1, 5, generator=g,
                                                                            dtype=torch.float64)
    out = stage2(pos, m, neg, pe, ne, temperature=0.5, margin=-1.0)
    p = F.normalize((m[0, :, None] * pos[0]).sum(0) / 1.5, dim=0)
    num = sum(float(m[0, n]) * math.exp(float(p @ F.normalize(pos[0, n], dim=0)) / 0.5)
              for n in range(2))
    den = num + sum(math.exp(float(p @ F.normalize(neg[0, n], dim=0)) / 0.5) for n in range(4))
    torch.testing.assert_close(out["patch_loss"], torch.tensor(-math.log(num / den),
                                                               dtype=torch.float64))
    torch.testing.assert_close(out["global_loss"], F.cosine_similarity(pe, ne)[0] + 1.0)


def test_collapse_monitors():
    same = torch.ones(1, 5, 4)
    out = collapse_monitors(same)
    torch.testing.assert_close(out["mean_pairwise_cos"], torch.tensor(1.0))
    torch.testing.assert_close(out["feature_std"], torch.tensor(0.0))
    eye = torch.eye(4)[None]
    torch.testing.assert_close(collapse_monitors(eye)["mean_pairwise_cos"], torch.tensor(0.0))
    masked = collapse_monitors(torch.cat([eye, same[:, :4]], 1), torch.tensor([[1.0] * 4 + [0.0] * 4]))
    assert int(masked["n_tokens"]) == 4


def test_stage2_counterfactual_closed_form():
    """Twins with identical tokens: every lesion patch costs max(0, 1 − margin), background 0.
    Lesion tokens orthogonal: inside 0; background weighted by (1 − m). Pairs without lesion
    are skipped (mean over 2 pairs)."""
    from finetune.losses import stage2_counterfactual

    torch.manual_seed(0)
    pos = torch.randn(3, 4, 8)
    mask = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    same = stage2_counterfactual(pos, pos.clone(), mask, margin=0.2)
    torch.testing.assert_close(same["inside_loss"], torch.tensor(0.8))
    torch.testing.assert_close(same["outside_loss"], torch.tensor(0.0))
    neg = pos.clone()
    e = torch.eye(8)
    neg[0, 0], pos[0, 0] = e[0], e[1]
    neg[0, 1], pos[0, 1] = e[2], e[3]
    neg[1, 2], pos[1, 2] = e[4], e[5]
    out = stage2_counterfactual(pos, neg, mask)
    torch.testing.assert_close(out["inside_loss"], torch.tensor(0.0))
    # patch 1 of pair 0 is half background: orthogonal there costs 0.5·1 / (0.5 + 2) on pair 0
    torch.testing.assert_close(out["outside_loss"], torch.tensor(0.5 * (0.5 * 1 / 2.5)))
    # flipped instead (cos −1): 0.5·2 / 2.5 on pair 0
    neg2 = neg.clone()
    neg2[0, 1] = -pos[0, 1]
    out2 = stage2_counterfactual(pos, neg2, mask)
    torch.testing.assert_close(out2["outside_loss"], torch.tensor(0.5 * (0.5 * 2 / 2.5)))


def test_stage2_text_closed_form():
    """Hand-built embeddings with known caption margins. T = e0, T⁻ = e1, so s(v) = v̂₀ − v̂₁:
    a lesion patch on T (s = 1) and its twin's patch on T⁻ (s = −1) each cost softplus(−1/τ);
    background patches (m = 0) never count; the pair without lesion is skipped."""
    import torch.nn.functional as F

    from finetune.losses import stage2_text

    tau, d = 0.5, 4
    e = torch.eye(d)
    text, text_neg = e[0].expand(3, d), e[1].expand(3, d)
    pos_p, neg_p = torch.randn(3, 2, d), torch.randn(3, 2, d)  # patch 1 is background
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    pos_p[:2, 0], neg_p[:2, 0] = e[0], e[1]  # the right way round at the lesion
    pos_e, neg_e = e[0].expand(3, d).clone(), e[2].expand(3, d).clone()  # s(e⁺) = 1, s(e⁻) = 0
    out = stage2_text(pos_p, neg_p, pos_e, neg_e, text, text_neg, mask, temperature=tau)
    right = F.softplus(torch.tensor(-1 / tau))
    torch.testing.assert_close(out["dense_loss"], right)  # (sp(−2) + sp(−2)) / 2 on both pairs
    torch.testing.assert_close(out["global_loss"], F.softplus(torch.tensor(-1 / tau)))
    torch.testing.assert_close(out["loss"], out["dense_loss"] + out["global_loss"])
    # background patches and the lesion-free pair do not count
    pos_b, neg_b = pos_p.clone(), neg_p.clone()
    pos_b[:, 1], neg_b[:, 1], pos_b[2], neg_b[2] = 5.0, -3.0, 7.0, 2.0
    torch.testing.assert_close(
        stage2_text(pos_b, neg_b, pos_e, neg_e, text, text_neg, mask, temperature=tau)["loss"],
        out["loss"])
    # swapped twins (the positive's lesion reads as lesion-free) cost softplus(+1/τ)
    swapped = stage2_text(neg_p, pos_p, neg_e, pos_e, text, text_neg, mask, temperature=tau)
    torch.testing.assert_close(swapped["dense_loss"], F.softplus(torch.tensor(1 / tau)))
    torch.testing.assert_close(swapped["global_loss"], F.softplus(torch.tensor(1 / tau)))
    # a gradient step on the positive's lesion patch raises its caption margin
    p = pos_p.clone().requires_grad_(True)
    q = torch.randn(3, 2, d)
    stage2_text(p, q, pos_e, neg_e, text, text_neg, mask)["loss"].backward()
    assert (p.grad[0, 0, 0] - p.grad[0, 0, 1]) < 0 and torch.all(p.grad[:, 1] == 0)
    none = stage2_text(pos_p, neg_p, pos_e, neg_e, text, text_neg, torch.zeros(3, 2))
    assert float(none["loss"]) == 0.0


def test_spatial_cross_entropy_closed_form():
    """Uniform logits over N patches: log N whatever the lesion's shape; a peaked map on the lesion
    patch: −log softmax; rows without a lesion do not count (they would be NaN); none: 0 with a graph."""
    z = torch.zeros(3, 4, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(spatial_cross_entropy(z, y), torch.tensor(math.log(4)))
    peaked = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    expected = -(2.0 - math.log(math.exp(2.0) + 3))
    torch.testing.assert_close(spatial_cross_entropy(peaked, y[:1]), torch.tensor(expected))
    # a row's weight is its normalised target: 0.25 / 0.75 of the two patches
    two = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    lsm = two.log_softmax(1)[0]
    torch.testing.assert_close(spatial_cross_entropy(two, torch.tensor([[0.2, 0.6, 0.0, 0.0]])),
                               -(0.25 * lsm[0] + 0.75 * lsm[1]))
    none = spatial_cross_entropy(z, torch.zeros(3, 4))
    none.backward()
    assert float(none.detach()) == 0.0 and z.grad is not None
