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
    """Conv(k)-GroupNorm-SiLU stages with stride 2, global average + max pool, linear → logit (B,)."""

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
        self.head = nn.Linear(2 * c, 1)
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, R, R) in [0,1] → logits (B,)."""
        f = self.features(x * 2 - 1)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        return self.head(pooled)[:, 0]


def build_scorer(kind: str) -> ConvScorer:
    if kind not in SCORER_CONFIGS:
        raise ValueError(f"unknown scorer {kind!r}; expected one of {sorted(SCORER_CONFIGS)}")
    return ConvScorer(SCORER_CONFIGS[kind])
