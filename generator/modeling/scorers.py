"""Small frozen CNN scorers: tumor-vs-normal (ranking and audit versions) and a fill detector.

The two lesion scorers differ in architecture, input resolution and seed, so that a generator
that learns to fool the ranking one is caught by the audit one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ScorerConfig:
    kind: str  # "lesion" | "audit" | "fill"
    in_channels: int  # 1 (image) or 2 (image + hole for the fill detector)
    resolution: int  # square input side; inputs are resized to it
    widths: tuple[int, ...]  # conv widths, one stride-2 stage each
    kernel: int = 3  # conv kernel size


SCORER_CONFIGS = {
    "lesion": ScorerConfig("lesion", 1, 64, (16, 32, 64, 64)),
    "audit": ScorerConfig("audit", 1, 48, (24, 48, 96), kernel=5),
    "fill": ScorerConfig("fill", 2, 64, (16, 32, 64, 64)),
}


class ConvScorer(nn.Module):
    """Conv(k)-GroupNorm-SiLU stages with stride 2, a 1×1 conv to a coarse logit map, max → logit.

    The map (one logit per output cell, side R / 2^stages) can be trained densely against the
    lesion / hole mask pooled to that grid (generator.train_scorers): image-level labels alone
    made these small nets collapse to the majority class within a CPU budget. The image logit is
    the map's maximum (multiple-instance pooling: an image is positive if any cell is).
    """

    def __init__(self, cfg: ScorerConfig):
        super().__init__()
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

    def logit_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → per-cell logits (B, R/2^n, R/2^n)."""
        return self.head(self.features(x * 2 - 1))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → image logits (B,) = max over the logit map."""
        return self.logit_map(x).amax((1, 2))


def build_scorer(kind: str) -> ConvScorer:
    if kind not in SCORER_CONFIGS:
        raise ValueError(f"unknown scorer {kind!r}; expected one of {sorted(SCORER_CONFIGS)}")
    return ConvScorer(SCORER_CONFIGS[kind])
