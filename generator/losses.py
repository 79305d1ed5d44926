"""Generator losses: pure functions of tensors (the DPO stage adds its own here)."""

from __future__ import annotations

import torch


def reference_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Region-weighted diffusion regression loss of the reference (inpainting) model.

    .. math:: L = \\frac{\\sum_{b,c,h,w} W_{bchw} (\\hat y_{bchw} - y_{bchw})^2}{\\sum W}

    pred, target: (B, C, H, W) the network output and the scheduler's target (ε, v or x0);
    weight: (B, 1 or C, H, W) per-pixel weights, e.g. hole 1.0 / context 0.05 / tumor 0 as in
    Durrer et al. 2024, "Denoising Diffusion Models for Inpainting of Healthy Brain Tissue"
    (arXiv 2402.17307). Reduction: weighted mean over all elements (a scalar); a batch whose
    weights are all zero gives 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred is {tuple(pred.shape)} but target is {tuple(target.shape)}")
    weight = weight.expand_as(pred).to(pred.dtype)
    err = (pred.float() - target.float()) ** 2
    return (weight.float() * err).sum() / weight.float().sum().clamp_min(1e-8)
