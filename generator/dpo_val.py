"""Validation of the generator's DPO stage (``generator.dpo``): the held-out-free validation items
and the metrics a checkpoint is kept by."""

from __future__ import annotations

import numpy as np

from generator.dpo_config import ValConfig
from generator.masks import dilate
from generator.predictor import NegativeGenerator
from generator.scoring import ranking_score, score_negatives
from shared.io import read_image, read_mask


def load_val_items(cfg: ValConfig, held_out: str, dilation_px: int = 2) -> list[dict]:
    """Validation positives with GT negatives from the training domains (never the held-out one)."""
    from shared.benchmark import load_manifest

    items = []
    for it in load_manifest(cfg.root):
        if it.split != cfg.split or it.label != "tumor" or it.domain == held_out:
            continue
        if it.gt_negative is None:
            continue
        gray = lambda x: (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)  # noqa: E731
        mask = read_mask(it.mask)
        items.append({"image": gray(read_image(it.image)), "mask": mask,
                      "gt": gray(read_image(it.gt_negative)), "region": dilate(mask, dilation_px)})
        if cfg.max_items and len(items) >= cfg.max_items:
            break
    if not items:
        raise ValueError(f"{cfg.root}: no {cfg.split} tumor items with GT outside {held_out!r}")
    return items


def evaluate(generator: NegativeGenerator, scorers, items: list[dict], *, steps: int,
             seed: int) -> dict[str, float]:
    """Mean inside-mask PSNR/SSIM vs GT, texture ratio, flip rates, ranking score, outside diff."""
    res = generator.generate([it["image"] for it in items], [it["mask"] for it in items],
                             num_samples=1, seed=seed, steps=steps)
    negs = [r[0].image for r in res]
    scores = score_negatives(scorers, negs, [it["image"] for it in items],
                             [it["region"] for it in items], [it["gt"] for it in items])

    def mean(key: str) -> float:
        vals = [s[key] for s in scores if key in s and np.isfinite(s[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "psnr": mean("psnr"), "ssim": mean("ssim"), "texture_ratio_gt": mean("texture_ratio_gt"),
        "flip_lesion": float(np.mean([s["lesion_prob"] < 0.5 for s in scores])),
        "flip_audit": float(np.mean([s["audit_prob"] < 0.5 for s in scores])),
        "fill_prob": mean("fill_prob"),
        "ranking_score": float(np.mean([ranking_score(s) for s in scores])),
        "outside_max_abs_diff": float(max(s["outside_max_abs_diff"] for s in scores)),
    }
