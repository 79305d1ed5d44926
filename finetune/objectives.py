"""Objectives: which features a run needs and how its loss is assembled from finetune.losses.

Each objective maps gathered (global-batch) features to a dict of named parts; the trainer
backpropagates ``parts["loss"]`` and logs the rest. Contrastive parts are computed on the global
batch (features gathered over processes with gradients), per-sample parts on the local shard —
both then give the single-process gradient after DDP's average (see finetune.features).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    "clip+dense": Needs(True, False, True, False, False),
    "dhn": Needs(False, False, False, False, False),
    "dhn+entropy": Needs(False, False, False, False, False),
    "dpo": Needs(False, True, True, True, True),
    "stage1": Needs(True, False, False, False, True),
    "stage2": Needs(True, True, False, False, True),
    "stage1+2": Needs(True, True, False, False, True),
}


# Objectives whose InfoNCE anchor can carry the patch-caption term (objective.anchor_dense_weight).
DENSE_ANCHORED = ("clip", "dpo", "stage1", "stage2", "stage1+2")


def needs_of(cfg: ObjectiveConfig) -> Needs:
    """What the configured objective needs; Stage 2's counterfactual and text forms also encode
    the negatives' captions (InfoNCE / caption margins), the hinge form does not."""
    needs = NEEDS[cfg.name]
    if cfg.name in ("stage2", "stage1+2") and cfg.stage2_form in ("counterfactual", "text"):
        needs = replace(needs, text_neg=True)
    if cfg.anchor_dense_weight > 0 and cfg.name in DENSE_ANCHORED:
        needs = replace(needs, tokens=True, text_neg=True)
    return needs


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


def _dense(cfg: ObjectiveConfig, out: dict, batch: dict, text_emb: torch.Tensor) -> dict:
    """patch_losses.patch_text_loss on the global batch: each positive's patch embeddings between
    its caption and its lesion-free caption (target = the patch's lesion fraction)."""
    from finetune.patch_losses import patch_text_loss

    return patch_text_loss(
        _global(out, "patch_emb"), text_emb, _global(out, "text_neg_emb"),
        gather(batch["soft_mask"]), gather(batch["is_tumor"].float()) > 0.5,
        temperature=cfg.dense_tau)


def compute_objective(
    name: str, cfg: ObjectiveConfig, out: dict, batch: dict, *, step: int, max_steps: int,
    ref_out: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Loss parts of objective ``name`` for one micro-batch's features ``out``.

    - ``clip``: symmetric InfoNCE (:func:`clip_infonce`); ``clip+dense``: + ``dense_weight ·
      patch_losses.patch_text_loss`` (each positive's patch embeddings between its caption and its
      lesion-free caption; pre-training the embedded CLIP) + ``spatial_weight ·`` its spatial
      cross-entropy;
    - ``dhn``: ``losses.dhn_nce``; ``dhn+entropy``: + ``entropy_weight · attention_entropy`` of
      the captured blocks (local shard);
    - ``dpo``: ``losses.clip_dpo`` (positive image + caption vs negative image + negative caption,
      frozen reference ``ref_out``) + ``clip_weight ·`` InfoNCE anchor;
    - ``stage1``: ``losses.stage1`` between each positive and the next one in the global batch
      (roll by one) + anchor; ``stage2``: ``losses.stage2`` (positive vs its negative) + anchor;
    - ``stage1+2``: both, Stage 2 scaled by the curriculum :func:`stage2_weight`;
      ``stage2_form: counterfactual`` swaps Stage 2 for ``losses.stage2_counterfactual`` and puts
      every negative, with its lesion-free caption, into the InfoNCE anchor; ``stage2_form:
      text`` swaps it for ``losses.stage2_text`` (caption margins of the positive vs its twin);
    - ``anchor_dense_weight`` > 0 adds ``anchor_dense_weight · patch_losses.patch_text_loss`` to the
      loss of clip, dpo and the Stage objectives (their anchor keeps the pre-training's term).

    ``batch["soft_mask"]`` is the local (B, N) patch mask fraction. Returns ``{"loss": total,
    parts..., "monitor/...": anti-collapse statistics}`` (scalars; monitors detached).
    """
    from finetune import losses  # the seed's losses (fine-tuning core)

    image_emb, text_emb = _global(out, "image_emb"), _global(out, "text_emb")
    scale = out["logit_scale"]
    parts: dict[str, torch.Tensor] = {}
    if name in ("clip", "clip+dense", "dpo", "stage1", "stage2", "stage1+2"):
        parts["clip_loss"] = clip_infonce(image_emb, text_emb, scale)
    if name == "clip":
        parts["loss"] = parts["clip_loss"]
    elif name == "clip+dense":
        dense = _dense(cfg, out, batch, text_emb)
        parts.update({"dense_loss": dense["loss"], "spatial_loss": dense["spatial"],
                      "monitor/dense_accuracy": dense["accuracy"]})
        parts["loss"] = (parts["clip_loss"] + cfg.dense_weight * dense["loss"]
                         + cfg.spatial_weight * dense["spatial"])
    elif name in ("dhn", "dhn+entropy"):
        dhn = losses.dhn_nce(image_emb, text_emb, temperature=cfg.tau, beta1=cfg.beta1,
                             beta2=cfg.beta2)
        parts["dhn_loss"] = dhn["loss"]
        parts["loss"] = dhn["loss"]
        if name == "dhn+entropy":
            mode = {"min": "minimize", "max": "maximize", "hinge": "hinge"}[cfg.entropy_mode]
            ent = losses.attention_entropy(out["attn"], mode=mode, h_min=cfg.entropy_min)
            parts["entropy_loss"], parts["monitor/attention_entropy"] = ent["loss"], ent["entropy"]
            parts["loss"] = parts["loss"] + cfg.entropy_weight * ent["loss"]
    elif name == "dpo":
        assert ref_out is not None, "dpo needs the reference model's features"
        dpo = losses.clip_dpo(
            image_emb, text_emb, _global(out, "neg_image_emb"), _global(out, "text_neg_emb"),
            gather(ref_out["image_emb"]), gather(ref_out["text_emb"]),
            gather(ref_out["neg_image_emb"]), gather(ref_out["text_neg_emb"]),
            beta=cfg.dpo_beta, kl_weight=cfg.dpo_kl_weight,
        )
        parts.update({"dpo_loss": dpo["dpo_loss"], "kl_loss": dpo["kl_loss"],
                      "monitor/reward_margin": dpo["reward_margin"],
                      "monitor/dpo_accuracy": dpo["accuracy"]})
        parts["loss"] = dpo["loss"] + cfg.clip_weight * parts["clip_loss"]
    else:
        tokens, soft = _global(out, "patch_tokens"), gather(batch["soft_mask"])
        counterfactual = name != "stage1" and cfg.stage2_form == "counterfactual"
        if counterfactual:  # each negative with its lesion-free caption in the image-text loss
            parts["clip_loss"] = clip_infonce(
                torch.cat([image_emb, _global(out, "neg_image_emb")]),
                torch.cat([text_emb, _global(out, "text_neg_emb")]), scale)
        total = cfg.clip_weight * parts["clip_loss"]
        if name in ("stage1", "stage1+2"):
            s1 = losses.stage1(tokens, tokens.roll(1, dims=0), soft, soft.roll(1, dims=0),
                               eps=cfg.ot_epsilon, n_iter=cfg.ot_iters, temperature=cfg.proto_tau,
                               ot_weight=cfg.ot_weight, contrastive_weight=cfg.contrastive_weight)
            parts.update({"stage1_loss": s1["loss"], "ot_loss": s1["ot_loss"],
                          "contrastive_loss": s1["contrastive_loss"]})
            total = total + s1["loss"]
        if name in ("stage2", "stage1+2"):
            w = cfg.stage2_weight if name == "stage2" else stage2_weight(cfg, step, max_steps)
            if counterfactual:
                s2 = losses.stage2_counterfactual(tokens, _global(out, "neg_patch_tokens"), soft,
                                                  margin=cfg.stage2_margin)
                parts.update({"stage2_inside_loss": s2["inside_loss"],
                              "stage2_outside_loss": s2["outside_loss"]})
            elif cfg.stage2_form == "text":
                s2 = losses.stage2_text(
                    _global(out, "patch_emb"), _global(out, "neg_patch_emb"), image_emb,
                    _global(out, "neg_image_emb"), text_emb, _global(out, "text_neg_emb"), soft,
                    temperature=cfg.proto_tau)
                parts.update({"stage2_dense_loss": s2["dense_loss"],
                              "stage2_global_loss": s2["global_loss"]})
            else:
                s2 = losses.stage2(tokens, soft, _global(out, "neg_patch_tokens"), image_emb,
                                   _global(out, "neg_image_emb"), temperature=cfg.proto_tau,
                                   margin=cfg.stage2_margin)
                parts.update({"stage2_patch_loss": s2["patch_loss"],
                              "stage2_global_loss": s2["global_loss"]})
            parts.update({"stage2_loss": s2["loss"], "stage2_weight": torch.tensor(float(w))})
            total = total + w * s2["loss"]
        parts["loss"] = total
        mon = losses.collapse_monitors(tokens, soft)
        parts.update({f"monitor/tumor_{k}": v for k, v in mon.items() if k != "n_tokens"})
    if cfg.anchor_dense_weight > 0 and name in DENSE_ANCHORED:
        dense = _dense(cfg, out, batch, text_emb)
        parts.update({"anchor_dense_loss": dense["loss"],
                      "monitor/dense_accuracy": dense["accuracy"]})
        parts["loss"] = parts["loss"] + cfg.anchor_dense_weight * dense["loss"]
    emb_mon = losses.collapse_monitors(image_emb[None])
    parts.update({f"monitor/image_{k}": v for k, v in emb_mon.items() if k != "n_tokens"})
    return parts
