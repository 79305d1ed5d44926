"""Small frozen CNN scorers: lesion-in-region (ranking and audit versions) and a fill detector.

The two lesion scorers are region-conditioned: input [image, region], answer "does the region
contain lesion tissue?" — exactly the scoring use (lesion residual inside the mask of a
generated negative). They see the image ring-standardised: minus the mean and over the std of
the image on a ring around the region, so the region's contrast relative to its surroundings is
the cue, whatever the modality's intensity scale (a whole-image classifier trained on three
domains gave every image of a held-out one p≈0.99). They differ in architecture, input
resolution and seed, so that a generator that learns to fool the ranking one is caught by the
audit one. The fill detector takes [image, hole] in [0,1] as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ScorerConfig:
    kind: str  # "lesion" | "audit" | "fill"
    in_channels: int  # channels given to forward: 1 (image) or 2 (image + region / hole)
    resolution: int  # square input side; inputs are resized to it
    widths: tuple[int, ...]  # conv widths, one stride-2 stage each
    kernel: int = 3  # conv kernel size
    # ring standardisation (needs in_channels 2): the image becomes z = (x − μ_ring) / max(σ_ring,
    # std_floor), clipped to ±z_clip and divided by z_clip; μ, σ over the region dilated by ring_px
    # (at model resolution) minus the region. 0 = off (input mapped x·2 − 1).
    ring_px: int = 0
    std_floor: float = 0.02  # lower bound of σ_ring (flat surroundings)
    z_clip: float = 5.0  # |z| clip before rescaling to [-1, 1]
    region_pool: bool = False  # image logit = max over the map cells the region touches
    # logit map = max(map of the input, map of the input with the image inverted): a lesion is
    # "the region differs from its ring" in either direction. The training domains' lesions are
    # mostly darker than their surroundings, the held-out chest opacities brighter (a scorer
    # without it ranked chest GT negatives above their positives; random inversion as an
    # augmentation instead kept it at p = 0.5 for every input within a CPU budget).
    polarity_invariant: bool = False


SCORER_CONFIGS = {
    "lesion": ScorerConfig("lesion", 2, 64, (16, 32, 64, 64), ring_px=6, region_pool=True,
                           polarity_invariant=True),
    "audit": ScorerConfig("audit", 2, 48, (24, 48, 96), kernel=5, ring_px=5, region_pool=True,
                          polarity_invariant=True),
    "fill": ScorerConfig("fill", 2, 64, (16, 32, 64, 64)),
}


# The whole-image scorers saved before region conditioning (scorers.json without
# "scorer_configs", session 2): tumor-vs-lesion-free on the image alone. ``load_scorers`` builds
# such weights with these, so old checkpoints stay comparable.
WHOLE_IMAGE_CONFIGS = {
    "lesion": ScorerConfig("lesion", 1, 64, (16, 32, 64, 64)),
    "audit": ScorerConfig("audit", 1, 48, (24, 48, 96), kernel=5),
    "fill": SCORER_CONFIGS["fill"],
}


def dilate_region(region: torch.Tensor, px: int) -> torch.Tensor:
    """Square (Chebyshev) dilation of a (B, 1, H, W) {0,1} mask by ``px`` pixels (max-pool)."""
    if px <= 0:
        return region
    return F.max_pool2d(region, 2 * px + 1, stride=1, padding=px)


def ring_standardise(
    image: torch.Tensor, region: torch.Tensor, ring_px: int, std_floor: float = 0.02,
    z_clip: float = 5.0,
) -> torch.Tensor:
    """(B, 1, H, W) image → clip((x − μ) / max(σ, std_floor), ±z_clip) / z_clip in [-1, 1].

    μ, σ: mean and (population) std of ``image`` over the ring ``dilate_region(region, ring_px)``
    minus the region (``region`` > 0.5 is inside); over the whole image where that ring is empty
    (empty region, or one covering the frame). Invariant to x → a·x + b (a > 0) while σ ≥
    std_floor / a.
    """
    inside = (region > 0.5).to(image.dtype)
    ring = dilate_region(inside, ring_px) * (1 - inside)
    n = ring.sum((2, 3), keepdim=True)
    ring = torch.where(n > 0, ring, torch.ones_like(ring))
    n = ring.sum((2, 3), keepdim=True)
    mu = (image * ring).sum((2, 3), keepdim=True) / n
    var = (((image - mu) ** 2) * ring).sum((2, 3), keepdim=True) / n
    z = (image - mu) / var.sqrt().clamp_min(std_floor)
    return z.clamp(-z_clip, z_clip) / z_clip


class ConvScorer(nn.Module):
    """Conv(k)-GroupNorm-SiLU stages with stride 2, a 1×1 conv to a coarse logit map, max → logit.

    The map (one logit per output cell, side R / 2^stages) can be trained densely against the
    lesion / hole mask pooled to that grid (generator.train_scorers): image-level labels alone
    made these small nets collapse to the majority class within a CPU budget. The image logit is
    the map's maximum (multiple-instance pooling: an image is positive if any cell is), over the
    cells the region touches when ``cfg.region_pool``.
    """

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
        if cfg.ring_px > 0 and cfg.in_channels != 2:
            raise ValueError("ring standardisation needs a region channel (in_channels 2)")
        layers, c = [], cfg.in_channels
        for w in cfg.widths:
            layers += [
                nn.Conv2d(c, w, cfg.kernel, padding=cfg.kernel // 2),
                nn.GroupNorm(4, w),
                nn.SiLU(),
                nn.Conv2d(w, w, 3, stride=2, padding=1),
                nn.SiLU(),
            ]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)
        self.cfg = cfg

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → the same shape, roughly in [-1, 1].

        Without ring standardisation: x·2 − 1. With it: [ring-standardised image, region·2 − 1].
        """
        cfg = self.cfg
        if cfg.ring_px <= 0:
            return x * 2 - 1
        image, region = x[:, :1], x[:, 1:2]
        z = ring_standardise(image, region, cfg.ring_px, cfg.std_floor, cfg.z_clip)
        return torch.cat([z, region * 2 - 1], dim=1)

    def logit_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → per-cell logits (B, R/2^n, R/2^n).

        With ``cfg.polarity_invariant``: the elementwise max of the maps of x and of x with the
        image channel replaced by 1 − image.
        """
        if self.cfg.polarity_invariant:
            x = torch.cat([x, torch.cat([1 - x[:, :1], x[:, 1:]], dim=1)])
        m = self.head(self.features(self.preprocess(x)))[:, 0]
        if self.cfg.polarity_invariant:
            m = torch.maximum(*m.chunk(2))
        return m

    def cell_mask(self, x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor | None:
        """Cells of a ``shape`` map that the region (channel 1, > 0.5) touches; None = all cells.

        A sample whose region is empty keeps all its cells.
        """
        if not self.cfg.region_pool:
            return None
        cells = F.adaptive_max_pool2d((x[:, 1:2] > 0.5).to(x.dtype), shape)[:, 0] > 0
        return cells | ~cells.flatten(1).any(1)[:, None, None]

    def pool(self, logit_map: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Image logits (B,): max of ``logit_map`` over ``cell_mask`` cells (all when None)."""
        cells = self.cell_mask(x, tuple(logit_map.shape[-2:]))
        if cells is None:
            return logit_map.amax((1, 2))
        return logit_map.masked_fill(~cells, float("-inf")).amax((1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → image logits (B,) = ``pool`` of the logit map."""
        return self.pool(self.logit_map(x), x)


def build_scorer(kind: str) -> ConvScorer:
    """A freshly initialised scorer of ``kind`` (one of ``SCORER_CONFIGS``)."""
    if kind not in SCORER_CONFIGS:
        raise ValueError(f"unknown scorer {kind!r}; expected one of {sorted(SCORER_CONFIGS)}")
    return ConvScorer(SCORER_CONFIGS[kind])
