"""Objectives: which features a run needs and how its loss is assembled from finetune.losses.

Each objective maps gathered (global-batch) features to a dict of named parts; the trainer
backpropagates ``parts["loss"]`` and logs the rest. Contrastive parts are computed on the global
batch (features gathered over processes with gradients), per-sample parts on the local shard —
both then give the single-process gradient after DDP's average (see finetune.features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetune.config import ObjectiveConfig
from finetune.features import gather


@dataclass(frozen=True)
class Needs:
    """What the forward pass must produce for an objective."""

    tokens: bool  # last-block patch tokens (Stage 1/2)
    negatives: bool  # negative images (Stage 2, DPO)
    text_neg: bool  # captions of the negatives (DPO)
    reference: bool  # a frozen copy of the initial model (DPO)
    tumors_only: bool  # train on lesion-bearing images only


NEEDS = {
    "clip": Needs(False, False, False, False, False),
    "dhn": Needs(False, False, False, False, False),
    "dhn+entropy": Needs(False, False, False, False, False),
    "dpo": Needs(False, True, True, True, True),
    "stage1": Needs(True, False, False, False, True),
    "stage2": Needs(True, True, False, False, True),
    "stage1+2": Needs(True, True, False, False, True),
}


def clip_infonce(image_emb: torch.Tensor, text_emb: torch.Tensor,
                 logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP InfoNCE (Radford et al. 2021), as open_clip's ``ClipLoss`` on one process.

    ``L = ½ [CE(s·Î Tᵀ, arange B) + CE(s·T Îᵀ, arange B)]`` with Î, T the L2-normalised
    (B, D) image and text embeddings and ``s`` the (already exponentiated) logit scale.
    Mean over the batch; scalar.
    """
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = logit_scale * img @ txt.T  # (B, B)
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def stage2_weight(cfg: ObjectiveConfig, step: int, max_steps: int) -> float:
    """Curriculum weight of Stage 2: 0 before ``start_frac``, linear to the full weight at
    ``end_frac`` of the run, constant after."""
    frac = step / max(1, max_steps)
    start, end = cfg.stage2_start_frac, cfg.stage2_end_frac
    if frac < start:
        return 0.0
    if end <= start or frac >= end:
        return cfg.stage2_weight
    return cfg.stage2_weight * (frac - start) / (end - start)


def _global(out: dict, key: str) -> torch.Tensor:
    return gather(out[key])


def compute_objective(
    name: str, cfg: ObjectiveConfig, out: dict, batch: dict, *, step: int, max_steps: int,
    ref_out: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Loss parts of objective ``name`` for one micro-batch's features ``out``.

    ``batch`` holds the local ``soft_mask`` (B, N); ``ref_out`` the frozen reference's features
    (DPO). Returns ``{"loss": total, "<part>_loss": ..., ...}`` (scalars).
    """
    image_emb, text_emb = _global(out, "image_emb"), _global(out, "text_emb")
    scale = out["logit_scale"]
    parts: dict[str, torch.Tensor] = {}
    if name == "clip":
        parts["clip_loss"] = clip_infonce(image_emb, text_emb, scale)
        parts["loss"] = parts["clip_loss"]
        return parts
    from finetune import losses  # the seed's losses (fine-tuning core)

    return losses_objective(losses, name, cfg, out, batch, image_emb, text_emb, scale,
                            step=step, max_steps=max_steps, ref_out=ref_out)


def losses_objective(*args, **kwargs) -> dict[str, torch.Tensor]:  # replaced below when wired
    raise NotImplementedError
