"""Evaluation of one CLIP on one benchmark domain for the ablation runner (:mod:`finetune.ablation`).

Cheap by design: LiteMedSAM's image embedding depends only on the image, so it is computed once
per image (:class:`CachedEncoder`) and reused by the reference passes (oracle box, centre box) and
every (variant, seed). Per positive: Dice/IoU/NSD of the saliency-prompted pipeline, the pointing
game, prompt faithfulness and the patch silhouette; per image (positives and negatives): the
zero-shot p(tumor).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import silhouette_samples

from finetune.evaluation.clip_bundle import ClipBundle
from finetune.evaluation.evaluate import BOX_RULES, DENSE_BOX_RULE, EvalConfig, evaluate_dataset
from finetune.evaluation.loading import clip_family
from finetune.evaluation.m2ib import m2ib_saliency
from finetune.evaluation.prompts import PromptSet
from finetune.evaluation.segmenters import LiteMedSAMSegmenter
from finetune.evaluation.tsne import patch_features
from finetune.evaluation.zero_shot import zero_shot_probs
from shared.benchmark import load_manifest
from shared.config import ConfigError
from shared.datasets import Pair
from shared.io import read_image, read_mask, save_torch_atomic

if TYPE_CHECKING:
    from finetune.ablation import AblationConfig


def embedding_key(x: torch.Tensor) -> str:
    """The cache key of an encoder input: sha1 of its bytes (``CachedEncoder``'s on-disk name, also
    used by the benches that read that cache)."""
    return hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class CachedEncoder(torch.nn.Module):
    """Wraps LiteMedSAM's image encoder: the output for an input tensor already seen (same
    bytes) is returned from memory (and from ``cache_dir`` across processes, if given), so each
    image is encoded once for all variants."""

    def __init__(self, encoder: torch.nn.Module, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.calls = 0  # real encoder forwards (for tests and timing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = embedding_key(x)
        if key in self.cache:
            return self.cache[key]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir else None
        if path is not None and path.is_file():
            self.cache[key] = torch.load(path, weights_only=True)
            return self.cache[key]
        self.calls += 1
        self.cache[key] = self.encoder(x)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_torch_atomic(self.cache[key], path)  # runs sharing the cache never collide
        return self.cache[key]


def cached_segmenter(checkpoint: str = "", cache_dir: str = "") -> LiteMedSAMSegmenter:
    """LiteMedSAM whose image encoder output is cached per image (and on disk if ``cache_dir``)."""
    seg = LiteMedSAMSegmenter(checkpoint or None)
    seg.model.image_encoder = CachedEncoder(seg.model.image_encoder, cache_dir or None)
    return seg


@dataclass
class EvalSet:
    """The held-out evaluation data (fixed for every model)."""

    pairs: list[Pair]  # positives (image, mask) for the segmentation pipeline
    masks: list[np.ndarray]  # GT masks of the positives
    pos: list[np.ndarray]  # positive images
    neg: list[np.ndarray]  # AUROC negatives: GT lesion-free versions + the domain's normals
    prompts: PromptSet  # each positive's own caption
    captions_neg: list[str]  # each positive's lesion-free caption (prompt faithfulness)
    class_prompts: dict[str, list[str]]  # zero-shot classes: normal vs tumor captions


def load_eval_set(cfg: AblationConfig, domain: str | None = None) -> EvalSet:
    """First ``n_positives`` tumor items of ``domain`` (default ``cfg.domain``; by id) in
    ``cfg.splits`` (all splits if empty); their GT negatives and the domain's normal images of the
    same splits."""
    domain = domain or cfg.domain
    items = sorted((it for it in load_manifest(cfg.bench) if it.domain == domain
                    and (not cfg.splits or it.split in cfg.splits)), key=lambda it: it.id)
    tumors = [it for it in items if it.label == "tumor"]
    if len(tumors) < cfg.n_positives:
        where = f"splits {list(cfg.splits)}" if cfg.splits else "all splits"
        raise ConfigError(f"domain {domain!r} of {cfg.bench} has {len(tumors)} tumor items in "
                         f"{where}, n_positives={cfg.n_positives} asked")
    tumors = tumors[: cfg.n_positives]
    normals = [it for it in items if it.label == "normal"]
    pairs = [Pair(f"{it.id}.png", Path(it.image), Path(it.mask)) for it in tumors]
    return EvalSet(
        pairs=pairs,
        masks=[read_mask(it.mask) for it in tumors],
        pos=[read_image(it.image) for it in tumors],
        neg=[read_image(it.gt_negative) for it in tumors] + [read_image(it.image) for it in normals],
        prompts=PromptSet((), {p.name: (it.caption,) for p, it in zip(pairs, tumors, strict=True)}),
        captions_neg=[it.caption_neg for it in tumors],
        class_prompts={"normal": [tumors[0].caption_neg],
                       "tumor": sorted({it.caption for it in tumors})},
    )


def eval_config(cfg: AblationConfig, mode: str) -> EvalConfig:
    """The pipeline's settings: cfg's saliency and box fields; the dense map is binarised by its
    own threshold (``DENSE_BOX_RULE``), M2IB's by 2-means."""
    binarize = ({k: DENSE_BOX_RULE[k] for k in ("binarize", "threshold")}
                if cfg.saliency == "dense" else {})
    return EvalConfig(mode=mode, saliency=cfg.saliency, m2ib=cfg.m2ib, seed=cfg.eval_seed,
                      component=cfg.box_component, box_dilation_px=cfg.box_dilation_px,
                      box_dilation_frac=cfg.box_dilation_frac, box_scale=cfg.box_scale,
                      **binarize)


def reference_config(cfg: AblationConfig, mode: str, saliency: str = "m2ib") -> EvalConfig:
    """The reference rows' settings: their boxes are exact (the GT box, the fixed centre box),
    so the model's box rule (component, dilation) does not apply to them."""
    return replace(eval_config(cfg, mode), saliency=saliency, **BOX_RULES["upstream"])


def evaluate_oracle(cfg: AblationConfig, data: EvalSet, segmenter) -> dict:
    """Dice/IoU/NSD per image with the GT mask's box as the prompt (upper bound)."""
    res = evaluate_dataset(None, data.pairs, segmenter=segmenter, prompts=None,
                           cfg=reference_config(cfg, "oracle"))
    return {m: [getattr(r.score, m) for r in res.images] for m in ("dice", "iou", "nsd")}


def evaluate_centre_box(cfg: AblationConfig, data: EvalSet, segmenter) -> dict:
    """Dice/IoU/NSD per image with a fixed centre box as the "saliency" (the floor any saliency
    must beat; model-independent)."""
    res = evaluate_dataset(None, data.pairs, segmenter=segmenter, prompts=None,
                           cfg=reference_config(cfg, "segmenter", "centre_box"))
    return {m: [getattr(r.score, m) for r in res.images] for m in ("dice", "iou", "nsd")}


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Pointing game for one image: 1.0 if the saliency map's maximum (the first, row-major, on
    ties) lies inside the lesion mask, else 0.0."""
    return float(mask.flat[int(np.argmax(saliency))])


def lesion_mass(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of a saliency map's mass inside the lesion mask: Σ s·m / Σ s (0 for an empty map)."""
    total = float(saliency.sum())
    return float(saliency[mask].sum()) / total if total > 0 else 0.0


def patch_silhouette_per_image(bundle: ClipBundle, data: EvalSet, *, cap: int = 0,
                               seed: int = 0) -> list[float]:
    """Cosine silhouette of tumor vs background patch tokens over all positives, averaged over
    each image's patches (mean over images ≈ the global silhouette, but pairable)."""
    feats, labels, owner = [], [], []
    rng = np.random.default_rng(seed)
    for i, (img, mask) in enumerate(zip(data.pos, data.masks, strict=True)):
        f, y = patch_features(bundle, [img], [mask])
        if cap and len(y) > cap:
            keep = rng.permutation(len(y))[:cap]
            f, y = f[keep], y[keep]
        feats.append(f)
        labels.append(y)
        owner.append(np.full(len(y), i))
    feats, labels, owner = np.concatenate(feats), np.concatenate(labels), np.concatenate(owner)
    if len(np.unique(labels)) < 2:
        raise ValueError("silhouette needs tumor and background patches; lesions too small?")
    s = silhouette_samples(feats, labels, metric="cosine")
    return [float(s[owner == i].mean()) for i in range(len(data.pos))]


def evaluate_model(cfg: AblationConfig, bundle: ClipBundle, data: EvalSet, segmenter) -> dict:
    """Per-image Dice/IoU/NSD/pointing/silhouette/prompt faithfulness and zero-shot p(tumor).

    Prompt faithfulness of a positive: the share of M2IB saliency mass inside its lesion with its
    own caption minus that with its lesion-free caption (same noise seed): > 0 when the "normal"
    prompt does not highlight the tumour as the tumour prompt does. ``pointing`` is the
    pipeline's map's (M2IB's, or the dense map's with ``cfg.saliency == "dense"``, which then
    also records M2IB's as ``m2ib_pointing``).
    """
    pointing: list[float] = []
    mass_pos: list[float] = []

    def on_image(result, image, gt):
        sal = result.saliency
        pointing.append(pointing_hit(sal, gt))
        mass_pos.append(lesion_mass(sal, gt))

    seeds = [cfg.eval_seed + i for i in range(len(data.pos))]  # the seeds evaluate_dataset gives
    dense = cfg.saliency == "dense"
    neg_prompts = (PromptSet((), {p.name: (c,) for p, c in zip(data.pairs, data.captions_neg,
                                                                 strict=True)}) if dense else None)
    res = evaluate_dataset(bundle, data.pairs, segmenter=segmenter, prompts=data.prompts,
                           cfg=eval_config(cfg, "segmenter"), on_image=on_image,
                           neg_prompts=neg_prompts)
    extra = {}
    if dense:  # faithfulness is M2IB's: its maps with the positive captions
        pos_maps = m2ib_saliency(bundle, data.pos, [data.prompts.for_image(p.name)
                                                    for p in data.pairs], cfg.m2ib, seed=seeds)
        mass_pos = [lesion_mass(s, m) for s, m in zip(pos_maps, data.masks, strict=True)]
        extra["m2ib_pointing"] = [pointing_hit(s, m) for s, m in zip(pos_maps, data.masks, strict=True)]
    probs, classes = zero_shot_probs(bundle, data.pos + data.neg, data.class_prompts)
    p_tumor = probs[:, classes.index("tumor")]
    n = len(data.pos)
    out = {m: [getattr(r.score, m) for r in res.images] for m in ("dice", "iou", "nsd")}
    neg_maps = m2ib_saliency(bundle, data.pos, [[c] for c in data.captions_neg], cfg.m2ib,
                             seed=seeds)
    mass_neg = [lesion_mass(s, m) for s, m in zip(neg_maps, data.masks, strict=True)]
    out.update(pointing=pointing, coarse_dice=[r.coarse_dice for r in res.images],
               lesion_mass=mass_pos, lesion_mass_neg_prompt=mass_neg,
               faithfulness=[a - b for a, b in zip(mass_pos, mass_neg, strict=True)],
               silhouette=patch_silhouette_per_image(bundle, data, cap=cfg.max_patches_per_image,
                                                     seed=cfg.eval_seed),
               p_pos=p_tumor[:n].tolist(), p_neg=p_tumor[n:].tolist(), **extra)
    return out


def with_box_rule(cfg: AblationConfig, rule: dict | None = None) -> AblationConfig:
    """``cfg`` with the box fields of ``rule`` (an ``evaluate.BOX_RULES`` entry). Without one, the
    fields ``cfg`` leaves unset (None) get the base model's family rule (read without loading its
    weights where it is an open_clip local dir); a field the user named wins."""
    keys = {"box_component": "component", "box_dilation_px": "box_dilation_px",
            "box_dilation_frac": "box_dilation_frac", "box_scale": "box_scale"}
    if rule is None:
        keys = {k: v for k, v in keys.items() if getattr(cfg, k) is None}
        if not keys:
            return cfg
        rule = BOX_RULES[clip_family(cfg.base_model)]
    return replace(cfg, **{k: rule[v] for k, v in keys.items()})
