"""Preference-tuning losses for the generator: pure functions of tensors (design §3).

- ``per_sample_mse``: the diffusion error of one prediction, averaged over C,H,W (optionally
  region-weighted), one value per sample;
- ``diffusion_dpo_loss``: Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908);
- ``sdpo_lambda`` / ``scale_grad``: the Diffusion-SDPO winner-preserving loser-gradient scale;
- ``parzen_mutual_information``: weighted Parzen-window MI (MONAI's GlobalMutualInformationLoss
  with per-pixel weights; equal to MONAI's with unit weights);
- ``mask_mi_loss``: the mask-aware MI regulariser on the winner's one-step x̂0;
- ``no_copy_loss``: forbids copying the lesion inside the mask;
- ``predicted_sample``: the one-step clean-sample estimate from a scheduler output.

Every loss returns named parts so the trainer can log them separately.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def per_sample_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample (weighted) mean squared error.

    .. math:: e_b = \\frac{\\sum_{c,h,w} W_{bchw} (\\hat y_{bchw} - y_{bchw})^2}{\\sum_{c,h,w} W_{bchw}}

    pred, target: (B, C, H, W); weight: (B, 1 or C, H, W) or None (all ones, i.e. the plain mean
    over C,H,W of design §3). Returns (B,).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred is {tuple(pred.shape)} but target is {tuple(target.shape)}")
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return err.flatten(1).mean(1)
    w = weight.float().expand_as(err)
    return (w * err).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-8)


def diffusion_dpo_loss(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    *,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Diffusion-DPO loss (Wallace et al. 2023, arXiv 2311.12908, eq. 14 with the ½ of design §3).

    .. math::
        d_θ = e_θ^w - e_θ^l,\\quad d_{ref} = e_{ref}^w - e_{ref}^l,\\quad
        L = -\\log σ\\big(-\\tfrac{β}{2}(d_θ - d_{ref})\\big)

    model_w, model_l, ref_w, ref_l: (B,) per-sample diffusion errors (``per_sample_mse``) of the
    policy and of the frozen reference on the winner and the loser, all with the same noise and
    timestep per sample. Reduction: mean over B. At θ = ref the loss is exactly log 2.
    Returns ``dpo_loss`` (scalar) and detached diagnostics: ``implicit_acc`` (share of samples
    with d_θ < d_ref, ties counting ½), ``reward_margin`` (mean −β/2·(d_θ − d_ref)).
    """
    shapes = {tuple(t.shape) for t in (model_w, model_l, ref_w, ref_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected four (B,) error vectors, got shapes {sorted(shapes)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    d_theta = model_w - model_l
    d_ref = (ref_w - ref_l).detach()
    logits = -0.5 * beta * (d_theta - d_ref)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        acc = (logits > 0).float() + 0.5 * (logits == 0).float()
    return {"dpo_loss": loss, "implicit_acc": acc.mean(), "reward_margin": logits.detach().mean()}


def sdpo_lambda(grad_w: torch.Tensor, grad_l: torch.Tensor, *, mu: float) -> torch.Tensor:
    """Per-sample loser-gradient scale of Diffusion-SDPO (winner-preserving DPO, 2025).

    .. math::
        λ_b = \\mathrm{clamp}\\Big(\\frac{(1-μ)\\,\\|g_w\\|^2}{⟨g_l, g_w⟩}, 0, 1\\Big)
        \\text{ if } ⟨g_l, g_w⟩ > 0, \\text{ else } 1

    grad_w, grad_l: (B, ...) gradients of the winner's and the loser's diffusion error w.r.t. the
    model outputs. With the loser's gradient scaled by λ, the update direction g_w − λ g_l has
    ⟨g_w − λ g_l, g_w⟩ ≥ μ‖g_w‖² (first order: the winner's error does not rise). Returns (B,)
    in [0, 1], detached.
    """
    if grad_w.shape != grad_l.shape:
        raise ValueError(f"grad_w is {tuple(grad_w.shape)} but grad_l is {tuple(grad_l.shape)}")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    gw, gl = grad_w.detach().flatten(1).float(), grad_l.detach().flatten(1).float()
    dot = (gw * gl).sum(1)
    ratio = (1.0 - mu) * (gw * gw).sum(1) / dot.where(dot > 0, torch.ones_like(dot))
    return torch.where(dot > 0, ratio.clamp(0.0, 1.0), torch.ones_like(dot))


def mse_output_grad(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """∂ e_b / ∂ pred of ``per_sample_mse`` in closed form: 2 W (pred − y) / ΣW, (B, C, H, W)."""
    diff = pred.detach().float() - target.detach().float()
    if weight is None:
        return 2.0 * diff / diff[0].numel()
    w = weight.float().expand_as(diff)
    return 2.0 * w * diff / w.flatten(1).sum(1).clamp_min(1e-8).view(-1, *[1] * (diff.ndim - 1))


def scale_grad(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same value as ``x`` (B,), gradient multiplied by ``scale`` (B,): s·x + (1 − s)·sg(x)."""
    scale = scale.detach().to(x.dtype)
    return scale * x + (1.0 - scale) * x.detach()


def parzen_mutual_information(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    num_bins: int = 23,
    sigma_ratio: float = 0.5,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Weighted Parzen-window mutual information between two images, per sample (nats).

    Gaussian windows on ``num_bins`` bin centres c_k in [0,1], σ = sigma_ratio·Δc:
    :math:`φ_k(x) ∝ \\exp(-(x-c_k)^2/2σ^2)` normalised over k. With per-pixel weights ω_n
    (normalised to sum 1), :math:`p_{ij} = Σ_n ω_n φ_i(a_n) φ_j(b_n)`, :math:`p_i, p_j` its
    marginals, :math:`I = Σ_{ij} p_{ij} \\log\\frac{p_{ij}+ε}{p_i p_j+ε}`. With unit weights this
    is exactly MONAI's ``GlobalMutualInformationLoss`` (gaussian kernel; Wells et al. 1996 /
    DeepReg), negated; the weights are our addition (MONAI has none). Values are clamped to
    [0,1]. a, b: (B, ...) same shape; weight: broadcastable to it, or None. Returns (B,).
    """
    if a.shape != b.shape:
        raise ValueError(f"a is {tuple(a.shape)} but b is {tuple(b.shape)}")
    centers = torch.linspace(0.0, 1.0, num_bins, device=a.device, dtype=torch.float32)
    preterm = 1.0 / (2.0 * (float(centers[1] - centers[0]) * sigma_ratio) ** 2)

    def window(x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0, 1).reshape(x.shape[0], -1, 1)  # (B, N, 1)
        w = torch.exp(-preterm * (x - centers) ** 2)  # (B, N, K)
        return w / w.sum(-1, keepdim=True)

    wa, wb = window(a), window(b)
    if weight is None:
        omega = torch.full(wa.shape[:2], 1.0 / wa.shape[1], device=a.device)
    else:
        omega = weight.float().expand_as(a).reshape(a.shape[0], -1)
        omega = omega / omega.sum(1, keepdim=True).clamp_min(1e-12)  # (B, N)
    pab = torch.bmm((wa * omega[..., None]).transpose(1, 2), wb)  # (B, K, K)
    pa = (wa * omega[..., None]).sum(1)  # (B, K)
    pb = (wb * omega[..., None]).sum(1)
    papb = pa[:, :, None] * pb[:, None, :]
    return (pab * torch.log((pab + eps) / (papb + eps) + eps)).sum((1, 2))


def mask_mi_loss(
    x0_hat: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, **parzen_kwargs: float
) -> dict[str, torch.Tensor]:
    """Mask-aware MI regulariser (our addition, design §3): keep x̂0 informative about the context.

    .. math:: L_{MI} = -\\frac{1}{B}Σ_b \\hat I\\big(\\hat x_0 ⊙ (1-m),\\; x ⊙ (1-m)\\big)

    with Î the Parzen MI of ``parzen_mutual_information`` weighted by (1 − m), so masked pixels do
    not enter the histograms at all (multiplying by (1 − m) alone would add a spike at 0).
    x0_hat, image: (B, 1, H, W) in [0,1]; mask: (B, 1, H, W), 1 = lesion/hole. Reduction: mean.
    """
    mi = parzen_mutual_information(x0_hat, image, 1.0 - mask, **parzen_kwargs)
    return {"mi_loss": -mi.mean(), "mi": mi.detach().mean()}


def no_copy_loss(
    x0_hat: torch.Tensor, image: torch.Tensor, smooth: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forbid copying the lesion inside the mask (our addition, design §3).

    .. math:: L_{copy} = \\frac{1}{B}Σ_b \\max\\big(0,\\ ρ_m(\\hat x_0 - s,\\ x - s)\\big)

    ρ_m is the Pearson correlation over the masked pixels of the fill's and the positive's
    deviations from ``smooth`` s (the lesion-free coarse fill of the hole): a fill that reproduces
    the lesion's pattern correlates positively with it; healthy texture does not. Shapes
    (B, 1, H, W); mask 1 = lesion/hole. Samples with < 2 masked pixels contribute 0.
    """
    m = mask.float()
    n = m.flatten(1).sum(1)
    u = (x0_hat.float() - smooth.float()) * m
    v = (image.float() - smooth.float()) * m
    mu_u = u.flatten(1).sum(1) / n.clamp_min(1)
    mu_v = v.flatten(1).sum(1) / n.clamp_min(1)
    shape = (-1, *[1] * (u.ndim - 1))
    du = (u - mu_u.view(shape)) * m
    dv = (v - mu_v.view(shape)) * m
    cov = (du * dv).flatten(1).sum(1)
    rho = cov / ((du**2).flatten(1).sum(1) * (dv**2).flatten(1).sum(1)).clamp_min(1e-12).sqrt()
    rho = torch.where(n >= 2, rho, torch.zeros_like(rho))
    return {"copy_loss": F.relu(rho).mean(), "copy_corr": rho.detach().mean()}


def predicted_sample(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    *,
    prediction_type: str,
) -> torch.Tensor:
    """One-step clean-sample estimate x̂0 from a diffusion model output.

    ε: :math:`\\hat x_0 = (x_t - \\sqrt{1-\\bar α_t}\\,\\hat ε)/\\sqrt{\\bar α_t}`;
    v: :math:`\\hat x_0 = \\sqrt{\\bar α_t}\\,x_t - \\sqrt{1-\\bar α_t}\\,\\hat v`;
    sample: the output itself. alphas_cumprod_t: (B,). Shapes of x_t (B, C, H, W).
    """
    a = alphas_cumprod_t.float().view(-1, *[1] * (x_t.ndim - 1)).to(x_t.device)
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * model_output) / a.sqrt().clamp_min(1e-4)
    if prediction_type == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


LOG2 = math.log(2.0)  # the Diffusion-DPO loss at initialisation (θ = ref)
