"""Training samples for the reference (healthy-tissue inpainting) model.

Two kinds of sample, both ``{"image", "hole", "target", "weight"}`` tensors of shape (1, H, W)
plus ``"visible"`` (1, 1, 1): 1 when the image's pixels inside the hole are the lesion-bearing
input (supervised), 0 when they are the answer itself (self-supervised; a see-through model must
not be shown them, ``generator.modeling.pixel_unet.condition``):
- supervised: a positive, its lesion mask (randomly dilated) as the hole, the GT negative (the same
  image without the lesion) as the target;
- self-supervised (Durrer et al. 2024): a lesion-shaped hole placed on healthy tissue away from
  any lesion, the image itself as the target; the lesion, if any, gets the ``tumor`` weight (0 by
  default) because the target there still shows tumor.

Optional domain-generalisation aids, both off by default: extra lesion-free anatomy from
``shared.benchmark.anatomy.AUX_SOURCES`` (self-supervised only) and a photometric augmentation
(contrast, gamma, blur) applied alike to input and target, so that the texture amplitude the model
puts into a hole follows its context instead of the training domains' typical amplitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from generator.masks import dilate, place_mask, random_lesion_mask
from generator.windows import WindowConfig


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/bench64"  # benchmark output (manifest.jsonl), made by python -m shared.benchmark
    held_out_domain: str = "chest_xray"  # never trained on; the acceptance numbers use it
    train_domains: tuple[str, ...] = ()  # empty → every manifest domain except held_out_domain
    split: str = "train"  # manifest split to train on: train | val | test
    p_self_supervised: float = 0.3  # share of tumor items used self-supervised (normals always are)
    max_dilation_px: int = 3  # supervised holes are the lesion dilated by 0..max px (inference: 2)
    tissue_threshold: float = 0.05  # intensity above which a pixel counts as tissue for placement
    augment: bool = True  # random flips and 90° rotations
    gt_negatives_as_normals: bool = False  # also self-supervise on each positive's GT negative
    aux_healthy: tuple[str, ...] = ()  # extra lesion-free anatomy (AUX_SOURCES names), self-supervised
    aux_per_source: int = 0  # crops drawn from each aux_healthy source
    photometric_p: float = 0.0  # share of samples given the photometric augmentation below
    contrast_range: tuple[float, float] = (0.3, 1.2)  # x → m + c·(x − m), m the image mean
    gamma_range: tuple[float, float] = (0.7, 1.4)  # then x → x^γ
    blur_p: float = 0.5  # of augmented samples, share also blurred by a Gaussian
    blur_sigma: tuple[float, float] = (0.4, 1.2)  # its σ in pixels
    # > 0: train on windows (generator.windows): this share are native-scale windows of real
    # anatomy split by source, the rest benchmark items seen through the predictor's window rule
    window_p: float = 0.0
    windows: WindowConfig = field(default_factory=WindowConfig)


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


def aux_records(cfg: DataConfig, size: int, *, seed: int = 0) -> list[Record]:
    """``cfg.aux_per_source`` lesion-free crops of each ``cfg.aux_healthy`` source, as normals.

    Cached beside the benchmark (``<root>/aux_healthy/<sources>_<n>_<size>_<seed>.npz``): the
    DICOM decoding is done once, and a machine with the cache needs no pydicom-data.
    """
    if not cfg.aux_healthy or cfg.aux_per_source <= 0:
        return []
    names = tuple(cfg.aux_healthy)
    cache = Path(cfg.root) / "aux_healthy" / f"{'+'.join(names)}_{cfg.aux_per_source}_{size}_{seed}.npz"
    if cache.is_file():
        images = np.load(cache)["images"]
    else:
        from shared.benchmark.anatomy import aux_healthy_images

        images = np.stack([im for im, _ in aux_healthy_images(names, cfg.aux_per_source, size, seed=seed)])
        # stored (and returned) as float16, |error| <= 2.4e-4 on [0, 1]: the cache is a third the
        # size, so it travels to a GPU box, and a first run sees what a cached run sees
        images = images.astype(np.float16)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, images=images)
    return [Record(image=im.astype(np.float32), mask=np.zeros(im.shape, bool), gt_negative=None)
            for im in images]


def photometric(
    image: np.ndarray, target: np.ndarray, hole: np.ndarray, cfg: DataConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The same random contrast, gamma and (sometimes) blur applied to ``image`` and ``target``.

    Contrast x → clip(m + c·(x − m)) about the target's mean m, then gamma x^γ, then a Gaussian
    blur of σ pixels with probability ``cfg.blur_p``. Outside ``hole`` the returned image is the
    returned target (blurring would otherwise smear the lesion of a positive across the hole's
    edge); inside it the image is never read by the model (masked out of the conditioning).
    """
    c = rng.uniform(*cfg.contrast_range)
    gamma = rng.uniform(*cfg.gamma_range)
    m = float(target.mean())
    blur = rng.uniform(*cfg.blur_sigma) if rng.random() < cfg.blur_p else 0.0

    def f(x: np.ndarray) -> np.ndarray:
        x = np.clip(m + c * (x - m), 0.0, 1.0) ** gamma
        return ndimage.gaussian_filter(x, blur) if blur > 0 else x

    new_target = f(target).astype(np.float32)
    return np.where(hole, f(image), new_target).astype(np.float32), new_target


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
        image = rec.image
        if self.cfg.photometric_p > 0 and rng.random() < self.cfg.photometric_p:
            image, target = photometric(image, target, hole, self.cfg, rng)
        arrays = [image, hole.astype(np.float32), target, weight]
        if self.cfg.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            arrays = [np.rot90(a, k) for a in arrays]
            arrays = [a[:, ::-1] for a in arrays] if flip else arrays
        t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None] for a in arrays]
        visible = torch.full((1, 1, 1), float(supervised))
        return {"image": t[0], "hole": t[1], "target": t[2], "weight": t[3], "visible": visible}

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
