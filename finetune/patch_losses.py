"""Patch-level terms: which patches hold the lesion, and how patch scores are trained on them.

Pure functions like :mod:`finetune.losses` (``{"loss": scalar, ...}`` dicts); shapes: ``B`` batch,
``N`` patch tokens (row-major, as ViT tokens), ``D`` embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_soft_mask(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area fraction of each patch covered by the lesion: masks (B, H, W) → (B, rows·cols).

    Row-major order, like ViT patch tokens. Exact box averages when H, W divide by the grid.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, H, W), got {tuple(masks.shape)}")
    return F.adaptive_avg_pool2d(masks.float()[:, None], grid).flatten(1)


def spatial_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The lesion as a distribution over patches, what the pointing game asks of a map:
    ``S = −mean_b Σ_n q_bn log softmax_n(z_b)_n`` with ``q_bn = y_bn / Σ_m y_bm``, over the rows
    with a lesion (Σ y > 0); 0 (with a graph) when no row has one.

    Shapes: logits ``z`` (B, N), target ``y`` (B, N) ≥ 0 (patch lesion fractions).
    """
    has = target.sum(1) > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    q = target[has] / target[has].sum(1, keepdim=True)
    return -(q * logits[has].log_softmax(1)).sum(1).mean()


def patch_text_loss(
    patch_emb: torch.Tensor, text_emb: torch.Tensor, text_neg_emb: torch.Tensor,
    soft_mask: torch.Tensor, valid: torch.Tensor, *, temperature: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Dense lesion/normal alignment of patch embeddings with the two captions of their image.

    Each patch embedding p_bn (projected to the joint space by the CLIP image head, as MaskCLIP
    reads dense CLIP features; Zhou et al., ECCV 2022) is scored between its image's lesion
    caption T_b and lesion-free caption T⁻_b:
    ``z_bn = (cos(p_bn, T_b) − cos(p_bn, T⁻_b)) / τ``, and ``y_bn`` = the patch's lesion-area
    fraction is its target (binary cross-entropy ``ℓ(z, y) = −y log σ(z) − (1−y) log σ(−z)``).
    Lesion and background are averaged separately (a lesion covers a few patches of many):
    ``L = ½ [Σ y ℓ / Σ y + Σ (1−y) ℓ / Σ (1−y)]`` over the ``valid`` rows (images whose two
    captions differ, i.e. positives). This is a text-driven segmentation loss: it teaches the
    tokens M2IB reads that the lesion is what the lesion caption is about.

    ``spatial`` is :func:`spatial_cross_entropy` of ``z`` against ``y`` over the valid rows (the
    objective's ``spatial_weight``; measured in bench/results/clip_spatial.md).

    Shapes: patch_emb (B, N, D), text_emb / text_neg_emb (B, D), soft_mask (B, N) in [0, 1],
    valid (B,) bool. Returns ``{"loss", "spatial", "accuracy"}`` (accuracy: patches with y ≥ 0.5
    scored z > 0 and y < 0.5 scored z ≤ 0, balanced the same way; no gradient). No valid row:
    loss and spatial 0.
    """
    if patch_emb.dim() != 3 or soft_mask.shape != patch_emb.shape[:2]:
        raise ValueError(f"patch_emb (B, N, D) and soft_mask (B, N) expected, got "
                         f"{tuple(patch_emb.shape)} and {tuple(soft_mask.shape)}")
    if not bool(valid.any()):
        zero = patch_emb.sum() * 0.0
        return {"loss": zero, "spatial": zero, "accuracy": zero.detach()}
    p = F.normalize(patch_emb[valid], dim=-1)
    t_pos = F.normalize(text_emb[valid], dim=-1)
    t_neg = F.normalize(text_neg_emb[valid], dim=-1)
    z = torch.einsum("bnd,bd->bn", p, t_pos - t_neg) / temperature  # (B', N)
    y = soft_mask[valid].to(z.dtype)
    per_patch = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    loss = 0.5 * ((per_patch * y).sum() / y.sum().clamp_min(1e-6)  # lesion, then background
                  + (per_patch * (1 - y)).sum() / (1 - y).sum().clamp_min(1e-6))
    spatial = spatial_cross_entropy(z, y)
    with torch.no_grad():
        hard = (y >= 0.5).to(z.dtype)
        correct = ((z > 0).to(z.dtype) == hard).to(z.dtype)
        acc = 0.5 * ((correct * hard).sum() / hard.sum().clamp_min(1)
                     + (correct * (1 - hard)).sum() / (1 - hard).sum().clamp_min(1))
    return {"loss": loss, "spatial": spatial, "accuracy": acc}
