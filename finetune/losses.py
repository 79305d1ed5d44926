"""Fine-tuning losses for the CLIP image encoder: pure functions returning dicts of named parts.

Every function takes tensors and keyword hyper-parameters and returns ``{"loss": scalar, ...}``
(extra keys are parts or diagnostics); the trainer sums weighted ``loss`` entries. Notation:
``s`` = cosine similarity, ``B`` batch, ``N`` patch tokens, ``W`` token width, ``D`` embedding dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from finetune.ot import Cost, Solver, sinkhorn_divergence


def _cos_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"expected two (B, D) embeddings of one shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if image_emb.shape[0] < 2:
        raise ValueError("contrastive losses need a batch of at least 2")
    return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def _dhn_direction(s: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    b = s.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    logits = s / temperature
    neg_inf = torch.finfo(s.dtype).min
    hard = torch.where(off, beta * logits, neg_inf)  # log of un-normalised hardness weights
    log_w = math.log(b - 1) + hard - torch.logsumexp(hard, dim=1, keepdim=True)
    log_denominator = torch.logsumexp(torch.where(off, log_w + logits, neg_inf), dim=1)
    return (log_denominator - logits.diagonal()).mean()


def dhn_nce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    temperature: float = 0.6,
    beta1: float = 0.15,
    beta2: float = 0.15,
) -> dict[str, torch.Tensor]:
    """Decoupled hard-negative NCE (MedCLIP-SAMv2; HN-NCE of arXiv 2301.02280 with α = 0).

    With s_ij = cos(image_i, text_j), τ = ``temperature``, B = batch:

    ``L_v→t = −(1/B) Σ_i log[ e^{s_ii/τ} / Σ_{j≠i} w_ij e^{s_ij/τ} ]``,
    ``w_ij = (B−1) e^{β1 s_ij/τ} / Σ_{k≠i} e^{β1 s_ik/τ}``;
    ``L_t→v`` the same on sᵀ with β2; ``loss = L_v→t + L_t→v``. Computed in log space.

    Shapes: image_emb, text_emb (B, D), any scale (normalised here). Reduction: mean over i.
    Returns ``loss``, ``loss_v2t``, ``loss_t2v``.
    """
    s = _cos_matrix(image_emb, text_emb)
    v2t = _dhn_direction(s, temperature, beta1)
    t2v = _dhn_direction(s.T, temperature, beta2)
    return {"loss": v2t + t2v, "loss_v2t": v2t, "loss_t2v": t2v}


def dhn_nce_upstream(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    temperature: float = 0.6,
    beta1: float = 0.15,
    beta2: float = 0.15,
    alpha: float = 0.0,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """What MedCLIP-SAMv2's shipped ``HardNegativeLoss`` computes (for reproducing their numbers).

    Not the paper's formula (see :func:`dhn_nce`). With L = S/τ (B, B), E = I, N = batch_size − 1:
    ``pos = exp(L ⊙ E)`` (off-diagonal entries become e^0 = 1),
    ``z_j = Σ_k exp(L ⊙ (1−E))_jk`` (row sums, diagonal contributing 1),
    ``w_ij = N exp(β1 L_ij (1−E)_ij) / z_j`` (normaliser broadcast over the column index j),
    ``neg_ij = w_ij exp(L_ij (1−E)_ij)``, element-wise
    ``ℓ_ij = −log(pos_ij / (α pos_ij + neg_ij)) − log(pos_ij / (α pos_ij + neg'_ij))`` with
    ``neg'`` the same on Lᵀ with β2; ``loss = mean_ij ℓ_ij`` over all B² entries.
    ``batch_size`` defaults to B (upstream passes the configured one). Returns ``loss``.
    """
    s = _cos_matrix(image_emb, text_emb)
    n_minus_1 = (batch_size if batch_size is not None else s.shape[0]) - 1
    eye = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    off = 1.0 - eye

    def negatives(logits: torch.Tensor, beta: float) -> torch.Tensor:
        z = torch.exp(logits * off).sum(dim=-1)  # (B,), indexed by row
        weights = n_minus_1 * torch.exp(beta * logits * off) / z  # z broadcast over columns
        return weights * torch.exp(logits * off)

    logits = s / temperature
    pos = torch.exp(logits * eye)
    neg_img, neg_txt = negatives(logits, beta1), negatives(logits.T, beta2)
    per_entry = -torch.log(pos / (alpha * pos + neg_img)) - torch.log(pos / (alpha * pos + neg_txt))
    return {"loss": per_entry.mean()}


AttentionMode = Literal["minimize", "maximize", "hinge"]


def attention_entropy(
    probs: torch.Tensor | Sequence[torch.Tensor],
    *,
    mode: AttentionMode = "minimize",
    h_min: float = 0.5,
    queries: Literal["cls", "all"] = "cls",
) -> dict[str, torch.Tensor]:
    """Normalised attention entropy of ViT blocks (cf. Zhai et al. 2023 on entropy collapse).

    ``H = −Σ_j a_qj log a_qj / log N`` over the N keys, in [0, 1]; averaged over heads and the
    chosen queries (``cls``: query 0, the most saliency-like row; ``all``: every query) and blocks.
    ``mode``: ``minimize`` → loss = mean H (sharper maps); ``maximize`` → loss = −mean H;
    ``hinge`` → loss = mean over images and blocks of max(0, h_min − H) (floor against collapse).
    Shapes: probs (B, heads, T, N) or a list of them (e.g. from ``capture_attention``).
    Returns ``loss`` and ``entropy`` (mean H, detached).
    """
    maps = [probs] if isinstance(probs, torch.Tensor) else list(probs)
    if not maps:
        raise ValueError("no attention maps given")
    per_block = []
    for p in maps:
        if p.dim() != 4:
            raise ValueError(f"attention maps must be (B, heads, T, N), got {tuple(p.shape)}")
        rows = p[:, :, :1] if queries == "cls" else p
        h = -(rows * rows.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])
        per_block.append(h.mean(dim=(1, 2)))  # (B,)
    h = torch.stack(per_block, dim=1)  # (B, blocks)
    if mode == "minimize":
        loss = h.mean()
    elif mode == "maximize":
        loss = -h.mean()
    elif mode == "hinge":
        loss = F.relu(h_min - h).mean()
    else:
        raise ValueError(f"unknown mode {mode!r}; use 'minimize', 'maximize' or 'hinge'")
    return {"loss": loss, "entropy": h.mean().detach()}


def clip_dpo(
    pos_image: torch.Tensor,
    pos_text: torch.Tensor,
    neg_image: torch.Tensor,
    neg_text: torch.Tensor,
    ref_pos_image: torch.Tensor,
    ref_pos_text: torch.Tensor,
    ref_neg_image: torch.Tensor,
    ref_neg_text: torch.Tensor,
    *,
    beta: float = 10.0,
    kl_weight: float = 0.0,
    kl_temperature: float = 0.07,
) -> dict[str, torch.Tensor]:
    """DPO for CLIP, the researcher's form, with an optional KL anchor (Afzali et al., ICLR 2025).

    ``s = cos(image, text)``; θ = policy, ref = frozen reference (pass its embeddings computed
    under ``no_grad``). ``m = (s_θ(x⁺,t⁺) − s_θ(x⁻,t⁻)) − (s_ref(x⁺,t⁺) − s_ref(x⁻,t⁻))``,
    ``L_DPO = −mean log σ(β m)``. KL anchor: π(·|x) = softmax_t(s(x, t)/kl_temperature) over the
    2B candidate texts [t⁺; t⁻] for every image in [x⁺; x⁻]; ``L_KL = mean_x KL(π_θ ‖ π_ref)``.
    ``loss = L_DPO + kl_weight · L_KL``; equals log 2 when policy = reference.
    Shapes: all (B, D). Returns ``loss``, ``dpo_loss``, ``kl_loss``, ``reward_margin``
    (mean m, detached), ``accuracy`` (share with m > 0, detached).
    """
    def cos(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(x, t, dim=-1)

    margin = (cos(pos_image, pos_text) - cos(neg_image, neg_text)) - (
        cos(ref_pos_image, ref_pos_text) - cos(ref_neg_image, ref_neg_text)
    )
    dpo = -F.logsigmoid(beta * margin).mean()

    def log_policy(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        s = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
        return F.log_softmax(s / kl_temperature, dim=-1)

    log_pi = log_policy(torch.cat([pos_image, neg_image]), torch.cat([pos_text, neg_text]))
    log_ref = log_policy(torch.cat([ref_pos_image, ref_neg_image]),
                         torch.cat([ref_pos_text, ref_neg_text])).detach()
    kl = (log_pi.exp() * (log_pi - log_ref)).sum(-1).mean()
    return {"loss": dpo + kl_weight * kl, "dpo_loss": dpo, "kl_loss": kl,
            "reward_margin": margin.mean().detach(), "accuracy": (margin > 0).float().mean()}


def _prototype(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of tokens (B, N, W) with weights (B, N), unit-normalised: (B, W)."""
    w = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    return F.normalize((w[:, :, None] * tokens).sum(1), dim=-1)


def _proto_infonce(proto: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                   neg_valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """−log e^{cos(p,p')/τ} / (e^{cos(p,p')/τ} + Σ_valid e^{cos(p,n)/τ}) per row: (B,)."""
    pos_logit = (proto * positive).sum(-1) / temperature  # (B,)
    neg_logit = torch.einsum("bw,bnw->bn", proto, F.normalize(negatives, dim=-1)) / temperature
    neg_logit = neg_logit.masked_fill(~neg_valid, torch.finfo(neg_logit.dtype).min)
    all_logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
    return torch.logsumexp(all_logits, dim=1) - pos_logit


def stage1(
    pos_tokens_a: torch.Tensor,
    pos_tokens_b: torch.Tensor,
    soft_mask_a: torch.Tensor,
    soft_mask_b: torch.Tensor,
    *,
    eps: float = 0.1,
    n_iter: int = 50,
    cost: Cost = "cosine",
    solver: Solver = "ours",
    temperature: float = 0.1,
    background_below: float = 0.0,
    ot_weight: float = 1.0,
    contrastive_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Stage 1 (pos–pos, EgoBridge-style): align the tumor token sets of two positives.

    OT part: debiased Sinkhorn divergence ``S_ε(μ_a, μ_b)`` (see ``finetune.ot``) between
    μ_a = Σ_n m^a_n δ_{x^a_n} / Σ m^a (soft-mask marginals, features not multiplied by the mask),
    cost 1 − cos by default; mean over pairs with tumor in both images.
    Contrastive part: tumor prototype p = normalise(Σ_n m_n x_n / Σ m_n) per image;
    ``L = −log e^{p_a·p_b/τ} / (e^{p_a·p_b/τ} + Σ_{n∈bg(a)} e^{p_a·x̂^a_n/τ})`` symmetrised over
    a↔b, background = patches with soft mask ≤ ``background_below``; mean over valid pairs.
    ``loss = ot_weight · ot_loss + contrastive_weight · contrastive_loss``.
    Shapes: pos_tokens_* (B, N, W) last-block patch tokens, soft_mask_* (B, N) in [0, 1].
    Returns ``loss``, ``ot_loss``, ``contrastive_loss``, ``valid_pairs``.
    """
    if pos_tokens_a.shape != pos_tokens_b.shape or soft_mask_a.shape != pos_tokens_a.shape[:2] \
            or soft_mask_b.shape != soft_mask_a.shape:
        raise ValueError(f"tokens {tuple(pos_tokens_a.shape)}/{tuple(pos_tokens_b.shape)} and soft "
                         f"masks {tuple(soft_mask_a.shape)}/{tuple(soft_mask_b.shape)} do not match")
    valid = (soft_mask_a.sum(1) > 0) & (soft_mask_b.sum(1) > 0)
    zero = pos_tokens_a.sum() * 0.0  # keeps the graph when no pair is valid
    if not bool(valid.any()):
        return {"loss": zero, "ot_loss": zero, "contrastive_loss": zero,
                "valid_pairs": valid.sum()}
    xa, xb, ma, mb = pos_tokens_a[valid], pos_tokens_b[valid], soft_mask_a[valid], soft_mask_b[valid]
    ot_loss = sinkhorn_divergence(xa, xb, ma, mb, eps=eps, n_iter=n_iter, cost=cost,
                                  solver=solver).mean()
    pa, pb = _prototype(xa, ma), _prototype(xb, mb)
    contrastive = 0.5 * (
        _proto_infonce(pa, pb, xa, ma <= background_below, temperature)
        + _proto_infonce(pb, pa, xb, mb <= background_below, temperature)
    ).mean()
    return {"loss": ot_weight * ot_loss + contrastive_weight * contrastive, "ot_loss": ot_loss,
            "contrastive_loss": contrastive, "valid_pairs": valid.sum()}


def stage2(
    pos_tokens: torch.Tensor,
    pos_soft_mask: torch.Tensor,
    neg_tokens: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    *,
    temperature: float = 0.1,
    margin: float = 0.0,
    patch_weight: float = 1.0,
    global_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Stage 2 (pos–neg): push the tumor-removed negative away from the positive's tumor.

    Every patch of the negative is background. Prototype p = normalise(Σ_n m_n x⁺_n / Σ m_n).
    Patch part (InfoNCE, τ): positives = the positive's tumor patches weighted by m, negatives =
    all patches y_n of the negative:
    ``L_patch = −log Σ_n m_n e^{p·x̂⁺_n/τ} / (Σ_n m_n e^{p·x̂⁺_n/τ} + Σ_n e^{p·ŷ_n/τ})``.
    Global part (hinge): ``L_global = max(0, cos(e⁻, e⁺) − margin)`` on the image embeddings.
    Means over pairs whose positive has tumor. ``loss = patch_weight·L_patch +
    global_weight·L_global``. Shapes: *_tokens (B, N, W), pos_soft_mask (B, N), *_emb (B, D).
    Returns ``loss``, ``patch_loss``, ``global_loss``.
    """
    if pos_tokens.shape != neg_tokens.shape or pos_soft_mask.shape != pos_tokens.shape[:2] \
            or pos_emb.shape != neg_emb.shape or pos_emb.shape[0] != pos_tokens.shape[0]:
        raise ValueError("stage2 shapes do not match: tokens (B, N, W) ×2, mask (B, N), emb (B, D) ×2")
    valid = pos_soft_mask.sum(1) > 0
    zero = pos_tokens.sum() * 0.0
    if not bool(valid.any()):
        return {"loss": zero, "patch_loss": zero, "global_loss": zero}
    xp, m, xn = pos_tokens[valid], pos_soft_mask[valid], neg_tokens[valid]
    proto = _prototype(xp, m)
    pos_logit = torch.einsum("bw,bnw->bn", proto, F.normalize(xp, dim=-1)) / temperature
    pos_logit = torch.where(m > 0, pos_logit + m.clamp_min(1e-12).log(),
                            torch.full_like(pos_logit, torch.finfo(pos_logit.dtype).min))
    neg_logit = torch.einsum("bw,bnw->bn", proto, F.normalize(xn, dim=-1)) / temperature
    log_pos = torch.logsumexp(pos_logit, dim=1)
    patch = (torch.logsumexp(torch.cat([pos_logit, neg_logit], dim=1), dim=1) - log_pos).mean()
    glob = F.relu(F.cosine_similarity(neg_emb[valid], pos_emb[valid], dim=-1) - margin).mean()
    return {"loss": patch_weight * patch + global_weight * glob, "patch_loss": patch,
            "global_loss": glob}


def stage2_counterfactual(
    pos_tokens: torch.Tensor, neg_tokens: torch.Tensor, pos_soft_mask: torch.Tensor, *,
    margin: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Token-level counterfactual Stage 2: a positive and its lesion-free twin differ only in the
    lesion, so their patch tokens should differ inside the mask and agree outside it.

    With c_n = cos(x⁺_n, x⁻_n) per patch and m_n the patch's lesion fraction:
    ``L_in = Σ m_n max(0, c_n − margin) / Σ m_n`` (lesion tokens pushed apart),
    ``L_out = Σ (1 − m_n)(1 − c_n) / Σ (1 − m_n)`` (background tokens pulled together),
    averaged over pairs whose positive has lesion patches; ``loss = L_in + L_out``. Unlike the
    global hinge of :func:`stage2` it never pushes the whole negative away from its positive.
    Shapes: pos_tokens / neg_tokens (B, N, W), pos_soft_mask (B, N). Returns ``loss``,
    ``inside_loss``, ``outside_loss``.
    """
    if pos_tokens.shape != neg_tokens.shape or pos_soft_mask.shape != pos_tokens.shape[:2]:
        raise ValueError("stage2_counterfactual: tokens (B, N, W) x2 and mask (B, N) expected, got "
                         f"{tuple(pos_tokens.shape)}, {tuple(neg_tokens.shape)}, "
                         f"{tuple(pos_soft_mask.shape)}")
    valid = pos_soft_mask.sum(1) > 0
    if not bool(valid.any()):
        zero = pos_tokens.sum() * 0.0
        return {"loss": zero, "inside_loss": zero, "outside_loss": zero}
    m = pos_soft_mask[valid]
    c = F.cosine_similarity(pos_tokens[valid], neg_tokens[valid], dim=-1)  # (B', N)
    inside = (m * F.relu(c - margin)).sum(1) / m.sum(1)
    outside = ((1 - m) * (1 - c)).sum(1) / (1 - m).sum(1).clamp_min(1e-6)
    return {"loss": (inside + outside).mean(), "inside_loss": inside.mean(),
            "outside_loss": outside.mean()}


def stage2_text(
    pos_patch_emb: torch.Tensor, neg_patch_emb: torch.Tensor, pos_emb: torch.Tensor,
    neg_emb: torch.Tensor, text_emb: torch.Tensor, text_neg_emb: torch.Tensor,
    pos_soft_mask: torch.Tensor, *, temperature: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Caption-grounded counterfactual Stage 2: the lesion, and only the lesion, is what moves an
    image from its lesion-free caption T⁻ to its lesion caption T.

    A positive and its lesion-free twin differ only inside the mask, so the twin says what the
    lesion contributes. With s(v) = cos(v, T) − cos(v, T⁻) (the caption margin of an embedding):
    - dense, at the lesion's location (patch embeddings through the image head, as
      :func:`finetune.patch_losses.patch_text_loss` reads them; MaskCLIP, Zhou et al. ECCV 2022): the positive's patches
      read as T, the twin's patches at the same place as T⁻:
      ``L_dense = Σ_n m_n [softplus(−s(p⁺_n)/τ) + softplus(s(p⁻_n)/τ)] / (2 Σ_n m_n)``;
    - global (a pairwise Bradley–Terry preference, as Diffusion-/CLIP-DPO compare a preferred and
      a dispreferred sample, here without a reference model): the positive's image embedding
      prefers T over T⁻ by more than its twin's does:
      ``L_global = softplus(−(s(e⁺) − s(e⁻))/τ)``.
    ``loss = L_dense + L_global``, means over pairs whose positive has lesion patches. Unlike the
    hinge of :func:`stage2` it never pushes the twin's embedding away from the positive as a
    whole, and unlike :func:`stage2_counterfactual` it ties the difference to the captions that
    M2IB's saliency is computed for (prompt faithfulness: the lesion-free caption should not find
    the lesion). Shapes: *_patch_emb (B, N, D), *_emb / text_* (B, D), pos_soft_mask (B, N) in
    [0, 1]. Returns ``loss``, ``dense_loss``, ``global_loss``.
    """
    b, n, d = pos_patch_emb.shape
    if neg_patch_emb.shape != (b, n, d) or pos_soft_mask.shape != (b, n) or any(
            t.shape != (b, d) for t in (pos_emb, neg_emb, text_emb, text_neg_emb)):
        raise ValueError("stage2_text shapes: patch embeddings (B, N, D) x2, mask (B, N), "
                         f"embeddings (B, D) x4; got {tuple(pos_patch_emb.shape)}, "
                         f"{tuple(neg_patch_emb.shape)}, {tuple(pos_soft_mask.shape)}, "
                         f"{[tuple(t.shape) for t in (pos_emb, neg_emb, text_emb, text_neg_emb)]}")
    valid = pos_soft_mask.sum(1) > 0
    if not bool(valid.any()):
        zero = pos_patch_emb.sum() * 0.0
        return {"loss": zero, "dense_loss": zero, "global_loss": zero}
    direction = F.normalize(text_emb[valid], dim=-1) - F.normalize(text_neg_emb[valid], dim=-1)

    def margin(v: torch.Tensor) -> torch.Tensor:  # s(v) for (B', N, D) or (B', D)
        v = F.normalize(v, dim=-1)
        return (torch.einsum("bnd,bd->bn", v, direction) if v.dim() == 3
                else (v * direction).sum(-1))

    m = pos_soft_mask[valid]
    s_pos, s_neg = margin(pos_patch_emb[valid]), margin(neg_patch_emb[valid])
    dense = (m * (F.softplus(-s_pos / temperature) + F.softplus(s_neg / temperature))).sum(1) \
        / (2 * m.sum(1))
    glob = F.softplus(-(margin(pos_emb[valid]) - margin(neg_emb[valid])) / temperature)
    return {"loss": dense.mean() + glob.mean(), "dense_loss": dense.mean(),
            "global_loss": glob.mean()}


@torch.no_grad()
def collapse_monitors(tokens: torch.Tensor, soft_mask: torch.Tensor | None = None,
                      *, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Anti-collapse statistics of (tumor) patch features, for logging (no gradient).

    tokens (B, N, W); with ``soft_mask`` (B, N) only patches with m > ``threshold`` count.
    On the unit-normalised selected features: ``feature_std`` = mean over dimensions of the
    per-dimension std (→ 0 under collapse; ≈ 1/√W for isotropic features), ``feature_std_min``,
    ``mean_pairwise_cos`` = mean cosine over distinct pairs (→ 1 under collapse).
    """
    feats = tokens.reshape(-1, tokens.shape[-1])
    if soft_mask is not None:
        feats = feats[soft_mask.reshape(-1) > threshold]
    if feats.shape[0] < 2:
        nan = tokens.new_tensor(float("nan"))
        return {"feature_std": nan, "feature_std_min": nan, "mean_pairwise_cos": nan,
                "n_tokens": tokens.new_tensor(feats.shape[0])}
    z = F.normalize(feats.float(), dim=-1)
    std = z.std(dim=0)
    n = z.shape[0]
    sum_cos = (z.sum(0) ** 2).sum() - n  # Σ_{i≠j} z_i·z_j via ‖Σ z‖² − Σ‖z_i‖²
    return {"feature_std": std.mean(), "feature_std_min": std.min(),
            "mean_pairwise_cos": sum_cos / (n * (n - 1)), "n_tokens": tokens.new_tensor(n)}
