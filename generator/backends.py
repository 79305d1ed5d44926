"""Training backends: what the reference and DPO loops need to know about a model, in one object.

``generator/train.py --stage reference`` and ``generator/dpo.py`` run one loop each; the model
behind it is a *backend adapter* chosen by ``model.backend``:

- ``PixelTrainBackend`` (``pixel``, the embedded default): the pixel-space ``UNet2DModel`` on
  ``[x_t, masked image, hole, coarse fill]``; the clean sample is the texture residual
  ``r0 = scale·(x0 − coarse)·hole`` (``generator.modeling.pixel_unet``).
- ``SDInpaintTrainBackend`` (``sd-inpaint``, in ``generator.sd_backend``): the 9-channel UNet of a diffusers
  ``StableDiffusionInpaintPipeline`` in latent space. Clean sample ``z0 = s·E(x0)`` (VAE mean,
  ``s = vae.config.scaling_factor``); conditioning ``[m↓, s·E(x⊙(1−m))]`` (the hole downsampled to
  latent size by nearest neighbour and the masked image's latents, the pipeline's own layout and
  order, ``StableDiffusionInpaintPipeline.prepare_mask_latents``); text condition the embeddings of
  the fixed ``HEALTHY_PROMPT`` computed once; target ε or v as the pipeline scheduler's
  ``prediction_type`` says. Trains LoRA adapters (peft, on ``to_q,to_k,to_v,to_out.0`` and
  optionally the resnets' ``conv1,conv2``; base frozen) or every UNet weight (``adapter: full``).
  With LoRA the frozen reference is *the same UNet with the adapters disabled* (or, when DPO
  starts from a reference LoRA, with that LoRA as the active adapter), never a second copy, as in
  diffusers' Diffusion-DPO example (``examples/research_projects/diffusion_dpo``).

A backend exposes: ``model`` (the module ``accelerator.prepare`` wraps), ``scheduler`` (DDPM,
training), ``prediction_type``, ``trainable_parameters()``, ``reference_batch(batch)`` →
``(x0, cond, weight)``, ``pair_batch(batch)`` → ``(x0_w, x0_l, cond, region)``,
``predict(x_t, cond, t)``, ``predict_reference(...)`` (no grad), ``image_estimate(...)`` (x̂0 as a
[0,1] image for the MI / no-copy terms), ``inference_backend()`` (for validation sampling) and
``save(dir, extra)``. The losses stay the pure functions of ``generator.losses`` and
``generator.preference``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from generator.losses import reference_loss
from generator.modeling import pixel_unet
from generator.sd_backend import SDModelConfig
from shared.config import ConfigError


@dataclass(frozen=True)
class GeneratorModelConfig(pixel_unet.PixelUNetConfig):
    """``model:`` of a training config: the pixel UNet's fields (used when ``backend: pixel``),
    the backend's name and the ``sd-inpaint`` section."""

    backend: str = "pixel"  # "pixel" (embedded UNet2DModel) | "sd-inpaint" (SD inpainting UNet)
    sd: SDModelConfig = field(default_factory=SDModelConfig)  # used when backend is sd-inpaint


BACKENDS = ("pixel", "sd-inpaint")


def pixel_config(model: pixel_unet.PixelUNetConfig) -> pixel_unet.PixelUNetConfig:
    """The plain ``PixelUNetConfig`` part of a ``GeneratorModelConfig`` (what checkpoints store)."""
    return pixel_unet.PixelUNetConfig(
        **{f.name: getattr(model, f.name) for f in fields(pixel_unet.PixelUNetConfig)}
    )


WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # per mixed_precision


def make_optimizer(params: list, *, lr: float, weight_decay: float = 0.0,
                   use_8bit: bool = False) -> torch.optim.Optimizer:
    """AdamW over ``params``; bitsandbytes' ``AdamW8bit`` when ``use_8bit`` (both Adam moments in
    8 bits, block-wise quantised: Dettmers et al. 2022, arXiv 2110.02861). Without bitsandbytes
    that is a ``ConfigError`` naming the fix."""
    if use_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            from shared.config import ConfigError

            raise ConfigError("optim.use_8bit_adam=true needs bitsandbytes, which is not "
                              f"importable here ({err}); pip install bitsandbytes or set it false"
                              ) from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """The regression target of a diffusion model: ε, v = √ᾱ_t ε − √(1−ᾱ_t) x0, or x0.

    x0, noise: (B, C, H, W); t: (B,) integer timesteps. ``scheduler.get_velocity`` computes v.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def crop_around_holes(
    tensors: list[torch.Tensor], hole: torch.Tensor, size: int
) -> list[torch.Tensor]:
    """Crop every (B, C, H, W) tensor to size² windows centred (jittered) on each row's hole.

    Training on crops is 4× cheaper at 32² of 64²; the UNet is convolutional (no attention in the
    embedded config), so it runs on full images at inference. Conditioning is computed on the
    full image before cropping, so the coarse-fill channel is the same as at inference.
    """
    b, _, h, w = hole.shape
    if size <= 0 or size >= min(h, w):
        return tensors
    out = [[] for _ in tensors]
    for i in range(b):
        ys, xs = torch.nonzero(hole[i, 0] > 0, as_tuple=True)
        cy, cx = (int(ys.float().mean()), int(xs.float().mean())) if ys.numel() else (h // 2, w // 2)
        jitter = torch.randint(-size // 4, size // 4 + 1, (2,))
        y0 = min(max(cy + int(jitter[0]) - size // 2, 0), h - size)
        x0 = min(max(cx + int(jitter[1]) - size // 2, 0), w - size)
        for j, t in enumerate(tensors):
            out[j].append(t[i : i + 1, :, y0 : y0 + size, x0 : x0 + size])
    return [torch.cat(parts) for parts in out]


def reference_step_loss(backend, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One reference-model loss on a batch, for any backend.

    Draws ε ~ N(0, I) and t ~ U{0..T−1} per sample, noises the backend's clean sample
    ``x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε`` and regresses the scheduler's target with
    ``generator.losses.reference_loss`` (region-weighted MSE; the weights come from the batch,
    downsampled to the model's grid by the backend). Returns a scalar.
    """
    x0, cond, weight = backend.reference_batch(batch)
    noise = torch.randn_like(x0)
    t = torch.randint(0, backend.scheduler.config.num_train_timesteps, (x0.shape[0],),
                      device=x0.device)
    x_t = backend.scheduler.add_noise(x0, noise, t)
    target = diffusion_target(backend.scheduler, x0, noise, t, backend.prediction_type)
    pred = backend.predict(x_t, cond, t)
    return reference_loss(pred, target, weight)


# -- pixel -----------------------------------------------------------------------------------------
class PixelTrainBackend:
    """The embedded pixel UNet as a training backend (a separate frozen copy as DPO reference)."""

    name = "pixel"

    def __init__(self, unet, scheduler, cfg: pixel_unet.PixelUNetConfig, *, reference=None,
                 crop: int = 0, sampler=None):
        self.model = unet
        self.sampler = sampler  # the checkpoint's DDIM scheduler for validation (None: built)
        self.reference = reference
        self.scheduler = scheduler
        self.cfg = pixel_config(cfg)
        self.crop = crop
        self.prediction_type = self.cfg.prediction_type

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every UNet weight (the pixel UNet is small: full fine-tuning)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def reference_batch(self, batch):
        """(r0, cond, weight) of a ``ReferenceDataset`` batch: residual (B,1,H,W), conditioning
        (B,3|4,H,W), region weights (B,1,H,W); cropped around the holes when ``crop`` > 0."""
        cond = pixel_unet.condition(batch["image"], batch["hole"], self.cfg, batch.get("visible"))
        r0 = pixel_unet.residual_target(batch["target"], cond, self.cfg)
        cond, r0, weight = crop_around_holes([cond, r0, batch["weight"]], cond[:, 1:2], self.crop)
        return r0, cond, weight

    def pair_batch(self, batch):
        """(r0_w, r0_l, cond, hole) of a pair batch (image/hole/winner/loser (B,1,H,W)): winner and
        loser share the conditioning; their clean samples are their residuals."""
        cond = pixel_unet.condition(batch["image"], batch["hole"], self.cfg)
        r_w = pixel_unet.residual_target(batch["winner"], cond, self.cfg)
        r_l = pixel_unet.residual_target(batch["loser"], cond, self.cfg)
        return r_w, r_l, cond, batch["hole"]

    def predict(self, x_t, cond, t):
        """The policy's output (ε, v or x0) for x_t (B,1,H,W), cond, t (B,)."""
        return self.model(pixel_unet.model_input(x_t, cond), t).sample

    @torch.no_grad()
    def predict_reference(self, x_t, cond, t):
        """The frozen reference copy's output (DPO only)."""
        return self.reference(pixel_unet.model_input(x_t, cond), t).sample

    def image_estimate(self, x0_hat, cond, batch):
        """x̂0 image = coarse + r̂0/scale (before paste-back: the model's own image), with the
        input image, the hole and the lesion-free coarse fill, all (B,1,H,W)."""
        coarse = cond[:, 2:3]
        return coarse + x0_hat / self.cfg.residual_scale, batch["image"], batch["hole"], coarse

    def register_checkpoint_hooks(self, accelerator) -> None:
        """Nothing to change: accelerate saves the whole (small) pixel UNet."""

    def inference_backend(self, unwrap=lambda m: m):
        """The live policy as the predictor's ``PixelBackend`` (DDIM sampling)."""
        from generator.build import PixelBackend

        sampler = self.sampler or pixel_unet.build_scheduler(self.cfg)
        return PixelBackend(unwrap(self.model), sampler, self.cfg)

    def save(self, out_dir, extra: dict, unwrap=lambda m: m) -> Path:
        """The ``pixel`` checkpoint layout (``generator.build.save_pixel_checkpoint``)."""
        from generator.build import save_pixel_checkpoint

        return save_pixel_checkpoint(out_dir, unwrap(self.model), self.cfg, extra=extra)


def checkpoint_state(ckpt: Path, state_file: str) -> dict | None:
    """The loop's state JSON a checkpoint folder ends with (written last, atomically), or None
    when the folder is incomplete (a run killed inside ``save_state`` leaves one without it)."""
    try:
        state = json.loads((Path(ckpt) / state_file).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "step" in state else None


def resolve_checkpoint(out: Path, resume: str, state_file: str) -> tuple[Path, dict]:
    """The checkpoint to resume and its state: ``resume`` itself, or with ``"latest"`` the newest
    complete ``OUT/checkpoints/checkpoint_N`` (the accelerate ``save_state`` folders of the
    reference and DPO loops; ``state_file`` is the JSON each loop writes last)."""
    if resume != "latest":
        state = checkpoint_state(Path(resume), state_file)
        if state is None:
            raise ConfigError(f"--resume {resume}: not a complete checkpoint folder (no readable "
                              f"{state_file}); 'latest' picks the newest complete one")
        return Path(resume), state
    ckpts = sorted((out / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
    done = [(c, st) for c in ckpts if (st := checkpoint_state(c, state_file)) is not None]
    if not done:
        raise ConfigError(f"--resume latest: no complete checkpoint under {out / 'checkpoints'}")
    return done[-1]
