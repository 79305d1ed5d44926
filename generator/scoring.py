"""Quality scores for generated negatives (design §5).

With a ground-truth negative (benchmark): SSIM / PSNR / MSE inside the mask vs the GT negative
(BraTS local-synthesis protocol, images in [0,1]), the texture ratio vs the GT, and exactness
outside the mask. Without one: the frozen region-conditioned lesion scorer's probability that
the region still holds lesion tissue (``lesion``; used for ranking), the audit scorer's
(``audit``; never used for ranking, for catching reward hacking), the fill detector's
probability that the hole was synthesised (``fill``), background fidelity, and the texture ratio
vs the surrounding tissue ring.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from generator.masks import RING_PX, dilate
from generator.modeling.scorers import (
    SCORER_CONFIGS,
    WHOLE_IMAGE_CONFIGS,
    ConvScorer,
    ScorerConfig,
)
from shared.metrics import (
    high_frequency_energy,
    masked_mse,
    masked_psnr,
    masked_ssim,
    texture_ratio,
)

SCORERS_DIR = Path(__file__).resolve().parent / "weights" / "scorers"  # embedded, committed


def _gray(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 2 else x.mean(axis=2)


def outside_max_abs_diff(negative: np.ndarray, image: np.ndarray, region: np.ndarray) -> float:
    """Largest |negative − image| outside ``region`` (0.0 for an exact paste-back)."""
    diff = np.abs(negative.astype(np.float64) - image.astype(np.float64))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    outside = ~np.asarray(region, bool)
    return float(diff[outside].max()) if outside.any() else 0.0


def scores_with_gt(
    negative: np.ndarray, gt_negative: np.ndarray, image: np.ndarray, region: np.ndarray
) -> dict[str, float]:
    """Fidelity vs the GT negative inside ``region`` (the dilated mask) and exactness outside."""
    return {
        "psnr": masked_psnr(negative, gt_negative, region),
        "ssim": masked_ssim(negative, gt_negative, region),
        "mse": masked_mse(negative, gt_negative, region),
        "texture_ratio_gt": texture_ratio(negative, gt_negative, region),
        "outside_max_abs_diff": outside_max_abs_diff(negative, image, region),
    }


def texture_ratio_ring(negative: np.ndarray, image: np.ndarray, region: np.ndarray) -> float:
    """High-frequency energy of the fill inside ``region`` / that of the input in a ring around it.

    No GT needed: the ring (``RING_PX`` wide, outside the region) is the surrounding real tissue.
    """
    region = np.asarray(region, bool)
    ring = dilate(region, RING_PX) & ~region
    ref = high_frequency_energy(_gray(image), ring) if ring.any() else 0.0
    if ref == 0.0:
        return float("nan")
    return high_frequency_energy(_gray(negative), region) / ref


@dataclass
class Scorers:
    """The three frozen classifiers, in eval mode."""

    lesion: ConvScorer  # lesion in [image, region]?, used to rank DPO pairs
    audit: ConvScorer  # the same question, different architecture; never used for ranking
    fill: ConvScorer  # filled-vs-real region, input [image, hole]
    checkpoint_hash: str = ""

    @torch.no_grad()
    def probabilities(
        self, images: Sequence[np.ndarray], regions: Sequence[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """{"lesion", "audit", "fill"} → (N,) probabilities for images (HxW[x3], [0,1]) and holes."""
        return {name: torch.sigmoid(scorer_logits(getattr(self, name), images, regions))
                .numpy().astype(np.float64) for name in ("lesion", "audit", "fill")}


def scorer_flags(probs: dict[str, np.ndarray], fill_gt: np.ndarray) -> list[dict[str, float]]:
    """Per image, from ``Scorers.probabilities`` of the outputs and the GT negatives' fill scores:
    ``lesion_flip = [p_lesion < 0.5]``, ``audit_flip = [p_audit < 0.5]``, ``fill_detected =
    [p_fill ≥ 0.5]`` and ``fill_above_gt = [p_fill > p_fill_gt] + ½·[p_fill = p_fill_gt]``: the
    detector's two-alternative choice against the GT's real tissue in the same region (0.5 =
    indistinguishable from real tissue, independent of the detector's threshold)."""
    return [
        {"lesion_flip": float(les < 0.5), "audit_flip": float(aud < 0.5),
         "fill_detected": float(fil >= 0.5),
         "fill_above_gt": float(fil > fgt) + 0.5 * float(fil == fgt)}
        for les, aud, fil, fgt in zip(probs["lesion"], probs["audit"], probs["fill"], fill_gt,
                                      strict=True)
    ]


@torch.no_grad()
def scorer_logits(
    model: ConvScorer, images: Sequence[np.ndarray], regions: Sequence[np.ndarray]
) -> torch.Tensor:
    """(N,) logits of one scorer for images with their regions; a whole-image scorer
    (``in_channels`` 1, the pre-region checkpoints) gets the images alone."""
    r = regions if model.cfg.in_channels == 2 else None
    return model(prepare(images, r, model.cfg.resolution))


def prepare(
    images: Sequence[np.ndarray], regions: Sequence[np.ndarray] | None, side: int
) -> torch.Tensor:
    """Images (gray or RGB → gray) resized to side² (antialiased), optional hole channel (any overlap).

    Returns (N, 1 or 2, side, side) float32.
    """
    batch = []
    for i, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(_gray(image), dtype=np.float32))[None, None]
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        if regions is not None:
            h = torch.from_numpy(np.asarray(regions[i], np.float32))[None, None]
            if h.shape[-2:] != (side, side):
                h = F.adaptive_max_pool2d(h, side) if min(h.shape[-2:]) >= side else F.interpolate(
                    h, size=(side, side), mode="nearest"
                )
            x = torch.cat([x, h], dim=1)
        batch.append(x)
    return torch.cat(batch)


def save_scorers(out_dir: str | Path, models: dict[str, ConvScorer], meta: dict) -> Path:
    """fp16 safetensors per scorer + ``scorers.json`` (``meta`` + each model's ScorerConfig under
    "scorer_configs", so the weights load after SCORER_CONFIGS changes)."""
    out = Path(out_dir)
    meta = {**meta, "scorer_configs": {name: asdict(m.cfg) for name, m in models.items()}}
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors"))
    (out / "scorers.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_scorers(path: str | Path | None = None) -> Scorers:
    """Load the embedded scorers (default) or those in ``path``; float32, eval mode.

    Each model is built from the ScorerConfig stored in ``scorers.json``; weights saved without
    stored configs predate them and are the whole-image scorers (``WHOLE_IMAGE_CONFIGS``).
    """
    from generator.build import hash_directory

    path = Path(path) if path is not None else SCORERS_DIR
    meta_file = path / "scorers.json"
    stored = json.loads(meta_file.read_text()).get("scorer_configs", {}) if meta_file.is_file() else {}
    models = {}
    for name in SCORER_CONFIGS:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{file} missing: train scorers with generator/train_scorers.py")
        cfg = stored.get(name)
        model = ConvScorer(ScorerConfig(**{**cfg, "widths": tuple(cfg["widths"])}) if cfg
                           else WHOLE_IMAGE_CONFIGS[name])
        model.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()})
        models[name] = model.eval()
    return Scorers(**models, checkpoint_hash=hash_directory(path))


def score_negatives(
    scorers: Scorers | None,
    negatives: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
    gt_negatives: Sequence[np.ndarray | None] | None = None,
) -> list[dict[str, float]]:
    """All available scores per negative (GT scores only where a GT negative is given)."""
    probs = scorers.probabilities(negatives, regions) if scorers is not None else {}
    out = []
    for i, (neg, image, region) in enumerate(zip(negatives, images, regions, strict=True)):
        s = {
            "outside_max_abs_diff": outside_max_abs_diff(neg, image, region),
            "texture_ratio_ring": texture_ratio_ring(neg, image, region),
        }
        s.update({f"{k}_prob": float(v[i]) for k, v in probs.items()})
        gt = gt_negatives[i] if gt_negatives is not None else None
        if gt is not None and np.asarray(region).any():
            s.update(scores_with_gt(neg, gt, image, region))
        out.append(s)
    return out


def ranking_score(scores: dict[str, float], *, max_outside_diff: float = 0.0) -> float:
    """Higher is better; what DPO pairs are ranked by (the audit scorer is deliberately absent).

    ``(1 − lesion_prob) + (1 − fill_prob) − |log texture_ratio_ring|``, and −inf when the
    background was altered beyond ``max_outside_diff`` (fidelity is a constraint, not a reward).
    """
    if scores["outside_max_abs_diff"] > max_outside_diff:
        return float("-inf")
    tex = scores.get("texture_ratio_ring", float("nan"))
    tex_term = abs(np.log(max(tex, 1e-3))) if np.isfinite(tex) else 0.0
    return (1 - scores["lesion_prob"]) + (1 - scores["fill_prob"]) - tex_term
