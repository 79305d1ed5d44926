"""Train the frozen scorers on the benchmark's training domains and save them (fp16 safetensors).

``python -m generator.train_scorers --config configs/generator/scorers.yaml``

- ``lesion`` (ranking) and ``audit`` (never used for ranking), region-conditioned (input [image,
  region]): "does the region contain lesion tissue?" (``lesion_examples``). 1: a positive with its
  lesion mask dilated by ``dilation_px``; 0: its GT negative with the same region, normals with
  a lesion-shaped region placed on tissue, and (``displaced_negatives``) positives with a region
  placed away from the lesion. The lesion in the region is the only cue.
- ``fill``: input [image, hole]; real tissue in the hole (GT negative / normal, 0) vs a fill (1)
  from classical fills (biharmonic, push-pull coarse fill, coarse fill + ring-matched noise) and,
  when ``generator`` is set, samples of that generator.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.checks import check_scorer_config
from generator.masks import coarse_fill, dilate, place_mask, random_lesion_mask
from generator.modeling.scorers import build_scorer
from generator.predictor import _classical
from generator.scoring import SCORERS_DIR, prepare, save_scorers
from shared.config import load_config, to_dict


@dataclass(frozen=True)
class ScorerTrainConfig:
    root: str = "data/bench64"  # benchmark output with manifest.jsonl
    held_out_domain: str = "chest_xray"  # excluded from training (acceptance numbers)
    split: str = "train"  # manifest split used: train | val | test
    steps: int = 300  # optimiser steps per scorer
    batch_size: int = 32  # images per step (half positives, half negatives: >= 2)
    lr: float = 2e-3  # AdamW learning rate
    dilation_px: int = 2  # hole = lesion dilated by this radius (as at inference)
    n_biharmonic: int = 300  # biharmonic fills to precompute (slow on CPU)
    # optional generator (a checkpoint folder, "pixel" = the embedded one, or a cached hub id)
    # whose fills are also "fake" examples
    generator: str = ""
    n_generator: int = 200  # generator fills to add when `generator` is set
    seed: int = 0  # data order and init; the audit scorer uses seed + 1
    # lesion scorers: a positive is shown as gt + α·(positive − gt), α ~ U[lesion_scale_min, 1]
    # (1 = off). Teaches subtle lesions: the held-out chest lesions change the image ~4× less
    # than the training domains' do.
    lesion_scale_min: float = 1.0
    # the lower bound of α falls linearly from 1 to lesion_scale_min over this share of the steps
    # (a curriculum: with faint lesions from step 0 the region-conditioned scorers stayed at
    # p = 0.5 for every input)
    lesion_scale_ramp: float = 0.0
    normal_regions: int = 2  # lesion scorers: placed regions per normal image
    displaced_negatives: bool = True  # lesion scorers: positives with a region off the lesion → 0
    device: str = "cpu"  # "cpu" | "cuda" | "auto" (cuda when available)
    num_threads: int = 1  # torch CPU threads
    out_dir: str = str(SCORERS_DIR)  # where the safetensors go


def _items(cfg: ScorerTrainConfig):
    """Training-domain images of ``cfg.split``: (positives, their masks, their GT negatives,
    lesion-free images = GT negatives + normals, holes = dilated mask per lesion-free image or
    None for a normal)."""
    from shared.benchmark import load_manifest
    from shared.io import read_image, read_mask

    pos, pos_masks, pos_gt, neg_free, holes = [], [], [], [], []
    for it in load_manifest(cfg.root):
        if it.domain == cfg.held_out_domain or it.split != cfg.split:
            continue
        image = read_image(it.image)
        image = image if image.ndim == 2 else image.mean(axis=2)
        if it.label == "tumor":
            mask = read_mask(it.mask)
            pos.append(image)
            pos_masks.append(mask)
            gt = read_image(it.gt_negative)
            neg_free.append(gt if gt.ndim == 2 else gt.mean(axis=2))
            pos_gt.append(neg_free[-1])
            holes.append(dilate(mask, cfg.dilation_px))
        else:
            neg_free.append(image)
            holes.append(None)
    return pos, pos_masks, pos_gt, neg_free, holes


def lesion_examples(cfg: ScorerTrainConfig, pos, pos_masks, pos_gt, neg_free, holes,
                    rng: np.random.Generator):
    """Region-conditioned lesion-scorer examples: (images, regions, lesion masks, labels, bases).

    Per positive: (positive, dilate(mask, dilation_px), mask, 1, base GT negative), (GT negative,
    same region, ∅, 0), and with ``displaced_negatives`` (positive, a region of the same shape
    placed on tissue away from dilate(mask, 4), ∅, 0). Per normal, ``normal_regions`` times:
    (normal, a positive's region placed on tissue (> 0.05), ∅, 0). ``bases``: the lesion-free
    twin for the contrast augmentation (the image itself for a 0). ∅: None (no lesion).
    """
    images, regions, masks, labels, bases = [], [], [], [], []

    def add(image, region, mask, label, base):
        images.append(image)
        regions.append(region)
        masks.append(mask)
        labels.append(label)
        bases.append(base)

    templates = [dilate(m, cfg.dilation_px) for m in pos_masks]
    for image, mask, gt, region in zip(pos, pos_masks, pos_gt, templates, strict=True):
        add(image, region, mask, 1.0, gt)
        add(gt, region, None, 0.0, gt)
        if cfg.displaced_negatives:
            placed = place_mask(region, dilate(mask, 4), image > 0.05, rng)
            if placed is not None:
                add(image, placed, None, 0.0, image)
    normals = [im for im, h in zip(neg_free, holes, strict=True) if h is None]
    for image in normals:
        for _ in range(cfg.normal_regions):
            t = templates[int(rng.integers(len(templates)))]
            placed = place_mask(t, np.zeros_like(t), image > 0.05, rng)
            add(image, t if placed is None else placed, None, 0.0, image)
    return images, regions, masks, labels, bases


def scorer_loss(
    logit_map: torch.Tensor, target_map: torch.Tensor, labels: torch.Tensor,
    image_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense + image-level BCE for a max-pooled scorer.

    L = mean_{b,i,j} BCE(m_bij, t_bij) + mean_b BCE(l_b, y_b), with m the logit map
    (B, h, w), t the mask max-pooled to (h, w) in {0,1} (all 0 for a negative) and y (B,) the
    image labels. The dense term gives every cell a target (multiple-instance learning with
    known instances), which trains these small nets in a few hundred CPU steps; the image term
    calibrates the pooled logit that ranking uses. l = ``image_logits`` (the model's pooling,
    e.g. over the region's cells), max_ij m_bij when None. Reduction: means, summed.
    """
    dense = F.binary_cross_entropy_with_logits(logit_map, target_map)
    pooled = logit_map.amax((1, 2)) if image_logits is None else image_logits
    image = F.binary_cross_entropy_with_logits(pooled, labels)
    return dense + image


def _train(
    model, xs: torch.Tensor, masks: torch.Tensor, ys: torch.Tensor, cfg: ScorerTrainConfig,
    seed: int, base: torch.Tensor | None = None,
) -> float:
    """Balanced batches (half positives), warm-up + cosine LR, dense supervision; train accuracy.

    ``base`` (same shape as ``xs``): each row's lesion-free twin (itself for negatives); with
    ``cfg.lesion_scale_min`` < 1 a drawn row becomes base + α·(x − base), α ~ U[lo, 1], lo
    falling from 1 to the min over the first ``cfg.lesion_scale_ramp`` share of the steps.
    """
    device = _device(cfg.device)
    model.to(device)
    xs, masks, ys = xs.to(device), masks.to(device), ys.to(device)
    base = base.to(device) if base is not None else None
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm)
                                                                      / max(1, cfg.steps - warm)))
    )
    pos_idx, neg_idx = torch.nonzero(ys > 0.5)[:, 0], torch.nonzero(ys < 0.5)[:, 0]
    half = cfg.batch_size // 2
    model.train()
    for step in range(cfg.steps):
        idx = torch.cat([pos_idx[torch.randint(0, len(pos_idx), (half,), generator=g)],
                         neg_idx[torch.randint(0, len(neg_idx), (half,), generator=g)]])
        x = xs[idx]
        if base is not None and cfg.lesion_scale_min < 1.0:
            ramp = min(1.0, step / max(1.0, cfg.lesion_scale_ramp * cfg.steps))
            lo = 1 - (1 - cfg.lesion_scale_min) * ramp
            alpha = lo + (1 - lo) * torch.rand(
                (len(idx), 1, 1, 1), generator=g).to(device)
            x = base[idx] + alpha * (x - base[idx])
        x = torch.cat([x, masks[idx]], dim=1)
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        x = torch.rot90(x, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
        logit_map = model.logit_map(x[:, :-1])
        target = F.adaptive_max_pool2d(x[:, -1:], logit_map.shape[-2:])[:, 0]
        loss = scorer_loss(logit_map, target, ys[idx], model.pool(logit_map, x[:, :-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = ((model(xs) > 0).float() == ys).float().mean().item()
    model.cpu()
    return acc


def _device(name: str) -> torch.device:
    """The torch device for ``name`` ("auto": cuda when available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fill_examples(cfg: ScorerTrainConfig, neg_free, holes, rng: np.random.Generator):
    """(real, fake) lists of (image, hole): real tissue vs several kinds of fill in the same holes."""
    real, fake = [], []
    templates = [h for h in holes if h is not None]
    for image, hole in zip(neg_free, holes, strict=True):
        if hole is None:
            t = templates[int(rng.integers(len(templates)))] if templates else random_lesion_mask(
                image.shape, rng, min_radius=3, max_radius=image.shape[0] / 6)
            placed = place_mask(t, np.zeros_like(t), image > 0.05, rng)
            hole = t if placed is None else placed
        real.append((image, hole))
    order = rng.permutation(len(real))
    for n, j in enumerate(order):
        image, hole = real[j]
        x = torch.from_numpy(image.astype(np.float32))[None, None]
        h = torch.from_numpy(hole.astype(np.float32))[None, None]
        coarse = coarse_fill(x, h)[0, 0].numpy()
        ring = dilate(hole, 4) & ~hole
        std = float((image - coarse)[ring].std()) if ring.any() else 0.05
        kind = n % 3
        if kind == 0 and n // 3 < cfg.n_biharmonic:
            fill = _classical(image, hole, "biharmonic")
        elif kind == 1:
            fill = coarse
        else:
            fill = np.clip(coarse + rng.normal(0, std, image.shape), 0, 1)
        fake.append((np.where(hole, fill, image).astype(np.float32), hole))
    if cfg.generator:
        from generator.build import load_generator

        gen = load_generator(cfg.generator)
        for j in order[: cfg.n_generator]:
            image, hole = real[j]
            out = gen.generate([image], [hole], seed=int(j), dilation_px=0)[0][0].image
            fake.append((out, hole))
    return real, fake


def train_lesion_scorer(name: str, cfg: ScorerTrainConfig, seed: int, pos, pos_masks, pos_gt,
                        neg_free, holes):
    """Train lesion scorer ``name`` ("lesion" | "audit") → (model, train accuracy).

    Region-conditioned (input [image, region]) on ``lesion_examples``.
    """
    torch.manual_seed(seed)
    model = build_scorer(name)
    side = model.cfg.resolution
    images, regions, masks, labels, bases = lesion_examples(
        cfg, pos, pos_masks, pos_gt, neg_free, holes, np.random.default_rng(seed))
    masks = [np.zeros(im.shape[:2], np.float32) if m is None else m.astype(np.float32)
             for im, m in zip(images, masks, strict=True)]
    xs = prepare(images, regions, side)
    base = prepare(bases, regions, side)
    ms = (prepare(masks, None, side) > 0).float()
    return model, _train(model, xs, ms, torch.tensor(labels), cfg, seed, base)


def main(argv: list[str] | None = None) -> None:
    """CLI: train lesion, audit and fill scorers on ``cfg``'s data and save them to ``out_dir``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(ScorerTrainConfig, args.config, args.overrides)
    check_scorer_config(cfg)  # mistakes end here, before any image loads or scorer trains
    torch.set_num_threads(cfg.num_threads)
    t0 = time.time()
    pos, pos_masks, pos_gt, neg_free, holes = _items(cfg)
    models, meta = {}, {"config": to_dict(cfg), "train_accuracy": {}}
    for name, seed in (("lesion", cfg.seed), ("audit", cfg.seed + 1)):
        models[name], meta["train_accuracy"][name] = train_lesion_scorer(
            name, cfg, seed, pos, pos_masks, pos_gt, neg_free, holes)
        print(name, meta["train_accuracy"][name], f"{time.time() - t0:.0f}s", flush=True)
    rng = np.random.default_rng(cfg.seed)
    real, fake = fill_examples(cfg, neg_free, holes, rng)
    torch.manual_seed(cfg.seed + 2)
    model = build_scorer("fill")
    xs = prepare([r[0] for r in real + fake], [r[1] for r in real + fake], model.cfg.resolution)
    ys = torch.tensor([0.0] * len(real) + [1.0] * len(fake))
    ms = xs[:, 1:2] * ys[:, None, None, None]  # the filled region is the positive instance
    meta["train_accuracy"]["fill"] = _train(model, xs, ms, ys, cfg, cfg.seed + 2)
    models["fill"] = model
    meta["train_seconds"] = round(time.time() - t0, 1)
    print("fill", meta["train_accuracy"]["fill"], f"{time.time() - t0:.0f}s", flush=True)
    save_scorers(cfg.out_dir, models, meta)


if __name__ == "__main__":
    from shared.cli import run

    run(main)
