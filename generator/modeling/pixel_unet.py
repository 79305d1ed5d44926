"""Pixel-space conditional diffusion for inpainting healthy tissue (the embedded default).

The UNet sees ``[x_t, masked image, mask, coarse fill]`` (B, 4, H, W) and predicts the diffusion
target (ε, v or x0, per the scheduler's ``prediction_type``) of the *texture residual*
``r0 = scale · (x0 − coarse_fill) · hole``: the smooth part of the fill is given, the network
learns what a smooth fill lacks.

``see_through`` adds a fifth channel, the input's own pixels inside the hole, in the residual's
coordinates: ``scale · (image − coarse_fill) · hole`` (for a healthy hole that is exactly ``r0``);
with ``see_through_sigma`` σ > 0 only their high-pass ``scale · (image − G_σ * image) · hole``.
In a projection image (radiograph) a lesion adds density on top of the anatomy, which stays
visible through it; a model that sees those pixels can remove the lesion instead of guessing
the anatomy from the context alone. Where the lesion replaces tissue (MRI, ultrasound) the
channel carries no anatomy and the model must learn to ignore it. Training marks per sample
whether the hole's pixels are the lesion-bearing input (``visible`` 1: supervised samples) or
would give the answer away (0: self-supervised holes on healthy tissue, the channel is zeroed).
The high-pass form shows only the fine structure: a lesion's density is mostly low-frequency, so
the model cannot copy it back, while the low frequencies still come from the context. Both forms
are an ablation, not the embedded default: CPU fine-tunes of the committed model gained nothing on
the held-out chest X-rays (bench/results/generator_see_through.md).

``sample(..., see_through_px=σ)`` is the inference-time form of the same idea, with no change to
the model: the lesion is treated as a smooth additive corruption, so the input's high-pass inside
the hole is a measurement of the negative's. At every reverse step the predicted clean residual's
high-pass (σ px) is replaced by the measured one (data consistency, as in ILVR, Choi et al. 2021,
and DDNM, Wang et al. 2023, here with a high-pass instead of a low-pass or a masking operator), and
the model supplies the low frequencies from the context. The same prior gives a second,
convex constraint: an added absorber only adds density, so (dense = bright, as radiographs are
displayed) the negative is nowhere brighter than the positive, and the estimate is clipped to
``x̂0 ≤ input`` inside the hole at every step. Only for projection radiographs: where a lesion
replaces tissue, its high-pass is the lesion's own texture and would be kept.

Reusable by the DPO stage: ``model_input`` builds the conditioning, ``residual_target`` the clean
sample, ``sample`` runs the reverse process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from generator.masks import biharmonic_fill, harmonic_fill

ETA_MAX = 0.999  # see sample(): η = 1 exactly can produce NaN in diffusers' DDIM step


@dataclass(frozen=True)
class PixelUNetConfig:
    resolution: int = 64  # square side the UNet runs at; inputs are resized to it and back
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # widths; 4 levels → 8×8 bottleneck
    layers_per_block: int = 1  # resnets per level (1 keeps a CPU step ≈0.2 s at batch 8)
    attention_levels: tuple[int, ...] = (3,)  # levels with self-attention (the 8×8 one only)
    norm_num_groups: int = 8  # GroupNorm groups; must divide every width
    prediction_type: str = "v_prediction"  # "epsilon" | "v_prediction" | "sample"
    num_train_timesteps: int = 1000  # DDPM training steps
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule: more steps at mid noise
    residual_scale: float = 4.0  # r0 = scale·(x0 − coarse): texture residuals have std ≈ 0.05–0.1
    coarse_levels: int = 6  # pyramid depth of the push-pull coarse fill
    harmonic_iters: int = 0  # Jacobi sweeps refining the coarse fill towards a harmonic one (0 = off)
    biharmonic_iters: int = 0  # > 0: the coarse fill is biharmonic instead (CG steps; overrides the above)
    eta: float = 1.0  # DDIM η at sampling: 1 = ancestral (stochastic, keeps texture), 0 = deterministic
    see_through: bool = False  # 5th input channel: the input's pixels inside the hole (see above)
    see_through_sigma: float = 0.0  # > 0: show only their high-pass, image − G_σ * image (σ in px)


def build_unet(cfg: PixelUNetConfig) -> UNet2DModel:
    """A ``UNet2DModel`` with 4 input channels (5 with ``see_through``) and 1 output, sized by ``cfg``."""
    n = len(cfg.block_out_channels)
    down = tuple(
        "AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(n)
    )
    up = tuple(
        "AttnUpBlock2D" if (n - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(n)
    )
    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=5 if cfg.see_through else 4,  # x_t, masked image, hole, coarse (+ see-through)
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=None,
    )


def build_scheduler(cfg: PixelUNetConfig, *, kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """Training (``ddpm``) or sampling (``ddim``) scheduler sharing the same β schedule."""
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing")
    raise ValueError(f"unknown scheduler kind {kind!r}; expected 'ddpm' or 'ddim'")


def config_dict(cfg: PixelUNetConfig) -> dict:
    """JSON-friendly dict of the config (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def condition(
    image: torch.Tensor, hole: torch.Tensor, cfg: PixelUNetConfig, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """Conditioning channels ``[masked image, hole, coarse fill]`` (+ with ``cfg.see_through``
    ``scale·(image − coarse)·hole·visible``): (B,1,H,W)×2 → (B,3 or 4,H,W). ``visible`` (B,1,1,1),
    default 1: whether the hole's pixels may be shown (training zeroes it for self-supervised holes)."""
    if cfg.biharmonic_iters > 0:
        coarse = biharmonic_fill(image, hole, iters=cfg.biharmonic_iters, levels=cfg.coarse_levels)
    else:
        coarse = harmonic_fill(image, hole, iters=cfg.harmonic_iters, levels=cfg.coarse_levels)
    channels = [image * (1 - hole), hole, coarse]
    if cfg.see_through:
        if cfg.see_through_sigma > 0:
            seen = cfg.residual_scale * (image - gaussian_blur(image, cfg.see_through_sigma)) * hole
        else:
            seen = cfg.residual_scale * (image - coarse) * hole
        channels.append(seen if visible is None else seen * visible)
    return torch.cat(channels, dim=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,C,H,W) Gaussian blur of std ``sigma`` px, kernel ±3σ, reflected borders (torchvision)."""
    from torchvision.transforms.v2.functional import gaussian_blur as tv_blur

    k = 2 * int(math.ceil(3 * sigma)) + 1
    return tv_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def widen_from(unet: UNet2DModel, source: UNet2DModel) -> UNet2DModel:
    """Copy ``source``'s weights into ``unet``, which may have more input channels (a 4-channel
    checkpoint into a see-through UNet): the extra input channels get zero weights, so the widened
    model computes exactly what ``source`` does until training moves them."""
    state = source.state_dict()
    w_old = state["conv_in.weight"]
    w_new = torch.zeros_like(unet.conv_in.weight)
    if w_old.shape[1] > w_new.shape[1] or w_old.shape[0] != w_new.shape[0]:
        raise ValueError(f"cannot widen conv_in {tuple(w_old.shape)} into {tuple(w_new.shape)}")
    w_new[:, : w_old.shape[1]] = w_old
    state["conv_in.weight"] = w_new
    unet.load_state_dict(state)
    return unet


def residual_target(
    target: torch.Tensor, cond: torch.Tensor, cfg: PixelUNetConfig
) -> torch.Tensor:
    """Clean diffusion sample r0 = scale·(target − coarse)·hole, (B,1,H,W)."""
    hole, coarse = cond[:, 1:2], cond[:, 2:3]
    return cfg.residual_scale * (target - coarse) * hole


def compose(r0: torch.Tensor, cond: torch.Tensor, cfg: PixelUNetConfig) -> torch.Tensor:
    """Image from a residual: coarse + r0/scale inside the hole, the input outside; clamped [0,1]."""
    masked, hole, coarse = cond[:, 0:1], cond[:, 1:2], cond[:, 2:3]
    fill = (coarse + r0 / cfg.residual_scale).clamp(0.0, 1.0)
    return masked * (1 - hole) + fill * hole


def model_input(x_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) noisy residual + (B,3 or 4,H,W) conditioning → the UNet input."""
    return torch.cat([x_t, cond], dim=1)


def hole_high_pass(z: torch.Tensor, hole: torch.Tensor, sigma: float) -> torch.Tensor:
    """``H(z) = hole·(z·hole − G_σ * (z·hole))``: the fine structure of ``z`` inside the hole, (B,1,H,W)."""
    z = z * hole
    return hole * (z - gaussian_blur(z, sigma))


def keep_high_pass(
    r0: torch.Tensor, seen_high: torch.Tensor, hole: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Replace the high-pass of the residual ``r0`` inside the hole by a measured one.

    ``r0 − H(r0) + seen_high`` with ``seen_high = H(seen)`` (``hole_high_pass``, computed once per
    sampling run): the low frequencies stay the model's, the fine structure becomes the measured
    one. All (B,1,H,W).
    """
    return r0 - hole_high_pass(r0, hole, sigma) + seen_high


def _clean_from_output(
    out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model's clean-sample estimate x̂0 from its output (ε, v or x0) at ᾱ_t."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * out) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * out
    return out


def _output_from_clean(
    x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Inverse of ``_clean_from_output``: the output that makes the scheduler step use ``x0``."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - a * x0) / s
    if prediction_type == "v_prediction":
        return (a * x_t - x0) / s
    return x0


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    cond: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    cfg: PixelUNetConfig,
    steps: int,
    strength: float = 1.0,
    init: torch.Tensor | None = None,
    see_through_px: float = 0.0,
) -> torch.Tensor:
    """Reverse diffusion of the residual; returns composed images (B,1,H,W) in [0,1].

    One ``torch.Generator`` per batch row, so a row's result does not depend on its batch
    neighbours. ``strength`` < 1 starts from ``init`` (the input image) noised to that fraction
    of the schedule (SDEdit); 1 starts from pure noise. ``see_through_px`` σ > 0 keeps the
    high-pass of ``init`` inside the hole and the fill at or below ``init`` (module docstring;
    projection radiographs only).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if see_through_px < 0:
        raise ValueError(f"see_through_px must be >= 0, got {see_through_px}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    b = cond.shape[0]
    assert len(generators) == b, "one generator per batch row"
    shape = (1, 1, *cond.shape[-2:])
    dtype, device = cond.dtype, cond.device

    def noise() -> torch.Tensor:
        return torch.cat([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)

    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    x = noise()
    if (strength < 1.0 or see_through_px > 0) and init is None:
        raise ValueError("strength < 1 and see_through_px > 0 need the init image")
    seen = residual_target(init, cond, cfg) if see_through_px > 0 else None
    seen_high = hole_high_pass(seen, cond[:, 1:2], see_through_px) if seen is not None else None
    prediction_type = scheduler.config.prediction_type
    if strength < 1.0:
        n_keep = max(1, int(round(steps * strength)))
        timesteps = timesteps[-n_keep:]
        r_init = residual_target(init, cond, cfg)
        x = scheduler.add_noise(r_init, x, timesteps[:1].repeat(b))
    # At η = 1 diffusers' DDIM direction term sqrt(1 − ᾱ_prev − σ²) is 0 in exact arithmetic and
    # can round to −1e-8 in float32 (NaN on the first step from t = 999); cap η just below 1.
    eta = min(cfg.eta, ETA_MAX)
    for t in timesteps:
        out = unet(model_input(x, cond), t).sample
        if seen is not None:
            alpha_bar = scheduler.alphas_cumprod[t].to(x)
            x0 = _clean_from_output(out, x, alpha_bar, prediction_type)
            x0 = keep_high_pass(x0, seen_high, cond[:, 1:2], see_through_px)
            x0 = torch.minimum(x0, seen)  # the lesion only added density: never above the input
            out = _output_from_clean(x0, x, alpha_bar, prediction_type)
        step_noise = noise() if eta > 0 else None
        x = scheduler.step(out, t, x, eta=eta, variance_noise=step_noise).prev_sample
    return compose(x, cond, cfg)
