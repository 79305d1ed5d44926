"""Training samples for the reference (healthy-tissue inpainting) model.

Two kinds of sample, both ``{"image", "hole", "target", "weight"}`` tensors of shape (1, H, W):
- supervised: a positive, its lesion mask (randomly dilated) as the hole, the GT negative (the same
  image without the lesion) as the target;
- self-supervised (Durrer et al. 2024): a lesion-shaped hole placed on healthy tissue away from
  any lesion, the image itself as the target; the lesion, if any, gets the ``tumor`` weight (0 by
  default) because the target there still shows tumor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generator.masks import dilate, place_mask, random_lesion_mask


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/bench64"  # benchmark output (manifest.jsonl), made by python -m shared.benchmark
    held_out_domain: str = "chest_xray"  # never trained on; the acceptance numbers use it
    train_domains: tuple[str, ...] = ()  # empty → every manifest domain except held_out_domain
    split: str = "train"  # manifest split to train on
    p_self_supervised: float = 0.3  # share of tumor items used self-supervised (normals always are)
    max_dilation_px: int = 3  # supervised holes are the lesion dilated by 0..max px (inference: 2)
    tissue_threshold: float = 0.05  # intensity above which a pixel counts as tissue for placement
    augment: bool = True  # random flips and 90° rotations
    gt_negatives_as_normals: bool = False  # also self-supervise on each positive's GT negative


@dataclass(frozen=True)
class RegionWeights:
    hole: float = 1.0  # inside the hole: what the model must synthesise
    context: float = 0.05  # outside the hole (pasted back at inference; a little keeps it sane)
    tumor: float = 0.0  # lesion pixels outside the hole of a self-supervised sample


@dataclass(frozen=True)
class Record:
    image: np.ndarray  # float32 HxW in [0,1] (positive or normal)
    mask: np.ndarray  # bool HxW lesion mask (all False for normals)
    gt_negative: np.ndarray | None  # float32 HxW, the image without the lesion, if known


def load_records(
    root: str | Path, *, domains: tuple[str, ...], split: str, gt_negatives_as_normals: bool = False
) -> list[Record]:
    """Read the benchmark items of ``domains`` and ``split`` into memory (grayscale).

    ``gt_negatives_as_normals`` adds every positive's GT negative as one more lesion-free record
    (more healthy tissue for self-supervised holes; the supervised record stays as well).
    """
    from shared.benchmark import load_manifest
    from shared.io import read_image, read_mask

    out = []
    for item in load_manifest(root):
        if item.domain not in domains or item.split != split:
            continue
        image = _gray(read_image(item.image))
        mask = read_mask(item.mask)
        gt = _gray(read_image(item.gt_negative)) if item.gt_negative is not None else None
        out.append(Record(image=image, mask=mask, gt_negative=gt))
        if gt_negatives_as_normals and gt is not None:
            out.append(Record(image=gt, mask=np.zeros_like(mask), gt_negative=None))
    if not out:
        raise ValueError(f"{root}: no {split} items in domains {domains}")
    return out


def _gray(x: np.ndarray) -> np.ndarray:
    return (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)


class ReferenceDataset(torch.utils.data.Dataset):
    """Endless random draws over ``records`` (the index picks the record; holes are random)."""

    def __init__(self, records: list[Record], cfg: DataConfig, weights: RegionWeights, *, seed: int):
        self.records = records
        self.cfg = cfg
        self.weights = weights
        self.rng = np.random.default_rng(seed)
        self.templates = [r.mask for r in records if r.mask.any()]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rec = self.records[idx]
        rng = self.rng
        supervised = rec.gt_negative is not None and rec.mask.any()
        if supervised and rng.random() < self.cfg.p_self_supervised:
            supervised = False
        hole = None if supervised else self._self_supervised_hole(rec)
        if hole is None and rec.gt_negative is not None and rec.mask.any():
            supervised = True  # no healthy spot for a self-supervised hole: use the GT instead
        if supervised:
            hole = dilate(rec.mask, int(rng.integers(0, self.cfg.max_dilation_px + 1)))
            target = rec.gt_negative
            tumor = np.zeros_like(hole)
        else:
            hole = hole if hole is not None else rec.mask.copy()
            target = rec.image
            tumor = rec.mask & ~hole
        w = self.weights
        weight = np.where(hole, w.hole, np.where(tumor, w.tumor, w.context)).astype(np.float32)
        arrays = [rec.image, hole.astype(np.float32), target, weight]
        if self.cfg.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            arrays = [np.rot90(a, k) for a in arrays]
            arrays = [a[:, ::-1] for a in arrays] if flip else arrays
        t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None] for a in arrays]
        return {"image": t[0], "hole": t[1], "target": t[2], "weight": t[3]}

    def _self_supervised_hole(self, rec: Record) -> np.ndarray | None:
        rng = self.rng
        shape = rec.image.shape
        if self.templates and rng.random() < 0.7:
            template = self.templates[int(rng.integers(len(self.templates)))]
            template = np.rot90(template, int(rng.integers(4)))
            if template.shape != shape:
                template = random_lesion_mask(shape, rng, min_radius=3, max_radius=shape[0] / 6)
        else:
            template = random_lesion_mask(shape, rng, min_radius=3, max_radius=shape[0] / 6)
        tissue = rec.image > self.cfg.tissue_threshold
        avoid = dilate(rec.mask, 4)
        placed = place_mask(template, avoid, tissue, rng)
        if placed is None:
            placed = place_mask(template, avoid, np.ones_like(tissue), rng)
        if placed is None and not rec.mask.any():
            placed = template
        return placed  # None: no lesion-free placement (the caller falls back to supervision)
