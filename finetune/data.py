"""Training data in memory: positives (and normals), masks, captions, negatives, as tensors.

The training sets here are small (hundreds to a few thousand 2-D images), so everything is read
once into uint8 tensors at the model's input size; a batch is an index array, which makes resume
and multi-process runs exact (see ``finetune.train_loop.batch_indices``).

Images are grayscale (colour inputs are averaged), resized to the square model input (stretch,
bilinear with antialias), replicated to the vision tower's channels and normalised with the
model's mean/std — the same as open_clip's transform for a gray image of that size.
Soft masks (design §4): the share of each ViT patch covered by the lesion mask, on the patch grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from finetune.config import DataConfig
from shared.benchmark import load_manifest
from shared.datasets import list_pairs, list_tasks, read_dpo_csv
from shared.io import InputError, check_pair, read_image, read_mask


class TrainDataError(InputError):
    """The configured training data is missing, empty or inconsistent (a user's mistake: the
    entry points print it as one line)."""


@dataclass
class Sample:
    """One training image as read from disk (original resolution)."""

    id: str  # unique name (benchmark id, or task/file name)
    image: np.ndarray  # float32 [0, 1], HxW
    mask: np.ndarray  # bool HxW (all False for a normal image)
    caption: str  # text of this image
    caption_neg: str  # text of its lesion-free version
    domain: str  # benchmark domain or MedCLIP-SAMv2 task
    is_tumor: bool  # mask has lesion pixels
    image_path: Path | None = None  # file it came from
    gt_negative: Path | None = None  # benchmark: the exact lesion-free image
    csv_negative: Path | None = None  # dpo_csv: the CSV's negative


@dataclass
class TrainTensors:
    """The whole training set at model resolution (row i = sample i)."""

    ids: list[str]
    domains: list[str]
    captions: list[str]
    captions_neg: list[str]
    images: torch.Tensor  # uint8 (N, S, S)
    masks: torch.Tensor  # bool (N, S, S), lesion mask at model resolution
    soft_masks: torch.Tensor  # float32 (N, gh*gw), lesion area fraction per patch, row-major
    is_tumor: torch.Tensor  # bool (N,)
    negatives: torch.Tensor  # uint8 (N, S, S); zeros where has_negative is False
    has_negative: torch.Tensor = field(default=None)  # bool (N,)
    # data.generic_caption_prob > 0: a positive's task caption (modality + noun), any other
    # sample's own caption; else empty
    captions_generic: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _gray(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=-1) if image.ndim == 3 else image


def _benchmark_samples(cfg: DataConfig) -> list[Sample]:
    items = load_manifest(cfg.root)
    known = {it.domain for it in items}
    if set(cfg.domains) - known:
        raise TrainDataError(f"data.domains names {sorted(set(cfg.domains) - known)}, not domains "
                             f"of {cfg.root} (it has {sorted(known)})")
    if set(cfg.held_out_domains) - known:  # a misspelt one would hold nothing out, silently
        warnings.warn(f"data.held_out_domains {sorted(set(cfg.held_out_domains) - known)} are not "
                      f"domains of {cfg.root} (it has {sorted(known)}): they hold nothing out",
                      stacklevel=2)
    domains = set(cfg.domains) if cfg.domains else known
    held = set(cfg.held_out_domains)
    clash = sorted(domains & held) if cfg.domains else []
    if clash:
        raise TrainDataError(f"data.domains {clash} are also in data.held_out_domains")
    out = []
    for it in items:
        if it.domain not in domains or it.domain in held or it.split != cfg.split:
            continue
        image, mask = _gray(read_image(it.image)), read_mask(it.mask)
        check_pair(image, mask, it.id)
        out.append(Sample(it.id, image, mask, it.caption, it.caption_neg, it.domain,
                          it.label == "tumor", it.image, it.gt_negative))
        if cfg.include_gt_negatives and it.gt_negative is not None:
            negative = _gray(read_image(it.gt_negative))
            check_pair(negative, mask, f"{it.id} (GT negative)")
            out.append(Sample(f"{it.id}#gt_negative", negative, np.zeros_like(mask),
                              it.caption_neg, it.caption_neg, it.domain, False, it.gt_negative))
    return out


def _medclip_samples(cfg: DataConfig) -> list[Sample]:
    held = set(cfg.held_out_domains)  # a task is the layout's domain: held-out ones never train
    if held & set(cfg.tasks):
        raise TrainDataError(f"data.tasks {sorted(held & set(cfg.tasks))} are also in "
                             "data.held_out_domains")
    tasks = list(cfg.tasks) or [t for t in list_tasks(cfg.root) if t not in held]
    if not tasks:
        raise TrainDataError(f"{cfg.root}: every task is in data.held_out_domains "
                             f"{sorted(held)}; nothing is left to train on")
    out = []
    for task in tasks:
        for pair in list_pairs(cfg.root, task, cfg.split):
            image, mask = _gray(read_image(pair.image_path)), read_mask(pair.mask_path)
            check_pair(image, mask, pair.name)
            out.append(Sample(f"{task}/{pair.name}", image, mask,
                              cfg.default_caption.format(task=task),
                              cfg.default_caption_neg.format(task=task), task, bool(mask.any()),
                              Path(pair.image_path)))
    return out


def _dpo_csv_samples(cfg: DataConfig) -> list[Sample]:
    """Rows of the DPO CSV whose positive lies in ``data.split`` and outside
    ``data.held_out_domains``: a path ``TASK/{split}_images/NAME`` (MedCLIP-SAMv2's layout, and the
    benchmark's ``DOMAIN/{split}_images/NAME``) is of that split and task; a row naming no
    ``*_images`` folder is kept, with a warning that its split cannot be told. A negative is looked
    up under ``data.root``, else beside the CSV (``generator/generate.py`` writes its negatives
    relative to its ``--out``, where its ``dpo_pairs.csv`` lies)."""
    if not cfg.csv:
        raise TrainDataError("data.kind=dpo_csv needs data.csv")
    root, beside = Path(cfg.root), Path(cfg.csv).parent
    held = set(cfg.held_out_domains)
    out, no_split = [], []
    for row in read_dpo_csv(cfg.csv):
        parts = Path(row.filename).parts
        split = next((p.removesuffix("_images") for p in parts[:-1] if p.endswith("_images")), None)
        if parts[0] in held or (split is not None and split != cfg.split):
            continue
        if split is None:
            no_split.append(row.filename)
        image_path = root / row.filename
        # MedCLIP-SAMv2 layout: TASK/{split}_images/NAME -> TASK/{split}_masks/NAME (a path outside
        # the layout has no mask: it used to map onto the image itself, read as a mask)
        mask_path = root.joinpath(*(p.replace("_images", "_masks") for p in parts))
        image = _gray(read_image(image_path))
        has_mask = split is not None and mask_path.is_file()
        mask = read_mask(mask_path) if has_mask else np.zeros(image.shape, bool)
        check_pair(image, mask, row.filename)
        negative = root / row.filename_neg
        if not negative.is_file() and (beside / row.filename_neg).is_file():
            negative = beside / row.filename_neg
        out.append(Sample(row.filename, image, mask, row.caption, row.caption_neg, parts[0],
                          bool(mask.any()), image_path, None, negative))
    if no_split:
        warnings.warn(f"{cfg.csv}: {len(no_split)} row(s) name no {{split}}_images folder (e.g. "
                      f"{no_split[0]}): trained on whatever their split; data.split={cfg.split} "
                      "cannot be told for them", stacklevel=2)
    return out


def load_samples(cfg: DataConfig, *, tumors_only: bool = False) -> list[Sample]:
    """Read the configured samples (sorted by id; ``max_items`` applied after sorting)."""
    readers = {"benchmark": _benchmark_samples, "medclip": _medclip_samples,
               "dpo_csv": _dpo_csv_samples}
    samples = sorted(readers[cfg.kind](cfg), key=lambda s: s.id)
    if tumors_only or not cfg.include_normals:
        samples = [s for s in samples if s.is_tumor]
    if cfg.max_items:
        samples = samples[: cfg.max_items]
    if len(samples) < 2:
        raise TrainDataError(
            f"{cfg.kind} data at {cfg.root} (split {cfg.split}) gives {len(samples)} usable "
            "samples; need at least 2"
        )
    return samples


def _resize(array: np.ndarray, size: int, *, mode: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if x.shape[-2:] == (size, size):
        return x[0, 0]
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")[0, 0]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0, 0]


def to_uint8_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """float [0,1] HxW (or HxWx3) -> uint8 (size, size)."""
    return (_resize(_gray(image), size, mode="bilinear").clamp(0, 1) * 255).round().to(torch.uint8)


def soft_mask(mask: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Lesion-area fraction of every patch, (gh*gw,) row-major; exact for grid-divisible sizes."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(m, grid).flatten()


def build_tensors(
    samples: list[Sample], *, image_size: int, grid: tuple[int, int],
    negatives: dict[str, np.ndarray] | None = None,
) -> TrainTensors:
    """Stack samples at model resolution; ``negatives`` maps sample id -> negative image."""
    negatives = negatives or {}
    n, s = len(samples), image_size
    images = torch.stack([to_uint8_tensor(x.image, s) for x in samples])
    masks = torch.stack([_resize(x.mask, s, mode="area") >= 0.5 for x in samples])
    soft = torch.stack([soft_mask(x.mask, grid) for x in samples])
    neg = torch.zeros((n, s, s), dtype=torch.uint8)
    has_neg = torch.zeros(n, dtype=torch.bool)
    for i, x in enumerate(samples):
        if x.id in negatives:
            neg[i] = to_uint8_tensor(negatives[x.id], s)
            has_neg[i] = True
    return TrainTensors(
        ids=[x.id for x in samples], domains=[x.domain for x in samples],
        captions=[x.caption for x in samples], captions_neg=[x.caption_neg for x in samples],
        images=images, masks=masks, soft_masks=soft,
        is_tumor=torch.tensor([x.is_tumor for x in samples], dtype=torch.bool),
        negatives=neg, has_negative=has_neg,
    )


def normalise(images_u8: torch.Tensor, *, mean: tuple[float, ...], std: tuple[float, ...],
              channels: int) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, C, S, S): [0,1], replicated to C channels, (x - mean) / std."""
    x = images_u8.float().div(255.0)[:, None].expand(-1, channels, -1, -1)
    m = torch.tensor(mean[:channels], dtype=x.dtype).view(1, -1, 1, 1)
    sd = torch.tensor(std[:channels], dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / sd
