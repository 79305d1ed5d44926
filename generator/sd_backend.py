"""The ``sd-inpaint`` training backend: the 9-channel UNet of a diffusers
``StableDiffusionInpaintPipeline`` trained in latent space, with LoRA adapters (peft) or in full,
and the diffusers LoRA format it saves (``save_lora``) and hashes (``lora_hash``).

The backend contract and the pixel backend are in ``generator.backends``; this module is the
``SDInpaintTrainBackend`` side of it (see that module's docstring for what a backend exposes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from generator.modeling import pixel_unet
from generator.modeling.sd_inpaint import HEALTHY_PROMPT

LORA_META = "generator_lora.json"  # written beside diffusers' pytorch_lora_weights.safetensors
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
POLICY, REFERENCE = "default", "reference"  # peft adapter names (policy / frozen reference LoRA)


@dataclass(frozen=True)
class SDModelConfig:
    pretrained: str = ""  # StableDiffusionInpaintPipeline dir (save_pretrained) or a cached hub id
    init_lora: str = ""  # reference stage: a diffusers LoRA dir to continue from ("" = fresh LoRA)
    adapter: str = "lora"  # "lora" (peft adapters, base frozen) | "full" (every UNet weight trains)
    lora_rank: int = 8  # LoRA rank r
    lora_alpha: float = 8.0  # LoRA α; the update is (α/r)·B·A
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
    lora_conv: bool = False  # also adapt the resnets' conv1/conv2 (conv LoRA)
    gradient_checkpointing: bool = False  # unet.enable_gradient_checkpointing(): less memory, ~30% slower
    resolution: int = 0  # pixel side images are resized to; 0 = the pipeline's (sample_size × VAE factor)
    prompt: str = HEALTHY_PROMPT  # the fixed text condition, embedded once


# -- Stable Diffusion inpainting ---------------------------------------------------------------------
def lora_config(cfg: SDModelConfig):
    """peft ``LoraConfig`` for the UNet: rank r, α, Gaussian-initialised A and zero B (the adapted
    UNet equals the base one until B moves), targets = attention projections (+ resnet convs)."""
    from peft import LoraConfig

    targets = list(cfg.lora_targets) + (["conv1", "conv2"] if cfg.lora_conv else [])
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                      target_modules=targets)


def save_lora(unet, out_dir: str | Path, *, adapter_name: str = POLICY,
              extra: dict | None = None) -> Path:
    """Write ``adapter_name`` of ``unet`` in diffusers' LoRA format (``pipe.load_lora_weights(dir)``
    loads it): ``get_peft_model_state_dict`` → ``convert_state_dict_to_diffusers`` →
    ``StableDiffusionLoraLoaderMixin.save_lora_weights`` with the ``LoraConfig`` as safetensors
    metadata (so r and α, hence the scale α/r, round-trip), plus ``generator_lora.json`` (how it
    was trained; diffusers ignores it)."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    meta = unet.peft_config[adapter_name].to_dict()
    StableDiffusionInpaintPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(state),
        unet_lora_adapter_metadata=meta, safe_serialization=True,
    )
    (out / LORA_META).write_text(json.dumps(extra or {}, indent=2, sort_keys=True, default=str) + "\n")
    return out


def lora_hash(base_hash: str, lora_dir: str | Path | None) -> str:
    """Checkpoint hash of base pipeline + optional LoRA: sha256("<base>+<hash of the LoRA dir>");
    the base hash alone when there is no LoRA (so a plain pipeline keeps its old id)."""
    if not lora_dir:
        return base_hash
    from generator.build import hash_directory

    return hashlib.sha256(f"{base_hash}+{hash_directory(Path(lora_dir))}".encode()).hexdigest()


class SDInpaintTrainBackend:
    """The SD inpainting UNet in latent space as a training backend (see the module docstring).

    ``reference_lora``: for DPO, a LoRA dir that *is* the reference (base + it); the policy adapter
    starts as a copy of it and the reference is that adapter, switched in for the no-grad pass.
    ``""``: the reference is the base UNet (adapters disabled). With ``adapter: full`` the
    reference is a frozen deep copy (only when ``need_reference``): full DPO holds two UNets.
    ``weight_dtype``: dtype of the frozen weights (VAE, text encoder, LoRA's base UNet) under
    mixed precision; trainable weights stay float32 (``diffusers.training_utils.cast_training_params``).
    """

    name = "sd-inpaint"

    def __init__(self, cfg: SDModelConfig, *, device: str | torch.device = "cpu",
                 weight_dtype: torch.dtype = torch.float32, need_reference: bool = False,
                 reference_lora: str = ""):
        from diffusers import DDPMScheduler

        from generator.build import SDInpaintBackend, hash_directory, resolve_local
        from generator.modeling import sd_inpaint

        if not cfg.pretrained:
            raise ValueError("model.sd.pretrained: name the StableDiffusionInpaintPipeline directory")
        if cfg.adapter not in ("lora", "full"):
            raise ValueError(f"model.sd.adapter must be 'lora' or 'full', got {cfg.adapter!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.weight_dtype = weight_dtype
        pipe = sd_inpaint.load_pipeline(cfg.pretrained, device=str(self.device))
        self.base_hash = hash_directory(resolve_local(cfg.pretrained))
        self.pipe = pipe
        self.vae = pipe.vae.requires_grad_(False).eval()
        pipe.text_encoder.requires_grad_(False)
        self.inference = SDInpaintBackend(pipe, cfg.prompt)  # embeds the prompt once
        self.prompt_embeds = self.inference.prompt_embeds.detach().to(self.device)
        if weight_dtype != torch.float32:  # only needed again if someone re-embeds a prompt
            pipe.text_encoder.to(dtype=weight_dtype)
        self.scaling = float(self.vae.config.scaling_factor)
        self.vae_factor = int(pipe.vae_scale_factor)
        self.resolution = cfg.resolution or sd_inpaint.resolution(pipe)
        if self.resolution % self.vae_factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE factor "
                             f"{self.vae_factor}")
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        unet = pipe.unet
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.reference = None
        self.has_reference_adapter = False
        init = reference_lora if need_reference else cfg.init_lora
        if cfg.adapter == "full":
            if init:  # the reference's LoRA merged into the weights, then trained as a whole
                pipe.load_lora_weights(init, adapter_name="init")
                pipe.fuse_lora(components=["unet"])
                pipe.unload_lora_weights()
            unet.requires_grad_(True).train()
            if need_reference:
                self.reference = copy.deepcopy(unet).requires_grad_(False).eval()
        else:
            unet.requires_grad_(False)
            if init:
                unet.load_lora_adapter(init, prefix="unet", adapter_name=REFERENCE,
                                       weight_name=LORA_WEIGHTS)
                unet.add_adapter(copy.deepcopy(unet.peft_config[REFERENCE]), adapter_name=POLICY)
                self._copy_adapter(unet, REFERENCE, POLICY)
                if need_reference:
                    self.has_reference_adapter = True
                else:
                    unet.delete_adapters(REFERENCE)
            else:
                unet.add_adapter(lora_config(cfg), adapter_name=POLICY)
            unet.set_adapter(POLICY)
            if weight_dtype != torch.float32:  # frozen base in bf16/fp16, adapters in fp32
                from diffusers.training_utils import cast_training_params

                unet.to(dtype=weight_dtype)
                cast_training_params(unet, dtype=torch.float32)
            unet.train()
        if weight_dtype != torch.float32:
            self.vae.to(dtype=weight_dtype)
        self.model = unet
        self.reference_lora = reference_lora

    @staticmethod
    def _copy_adapter(unet, src: str, dst: str) -> None:
        """Copy the LoRA weights of adapter ``src`` into adapter ``dst`` (same shapes)."""
        params = dict(unet.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if f".{dst}." in name:
                    p.copy_(params[name.replace(f".{dst}.", f".{src}.")])

    @property
    def raw(self):
        """The UNet itself (under ``accelerator.prepare`` ``model`` may be a DDP wrapper)."""
        return self.pipe.unet

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The policy adapter's LoRA weights (``adapter: lora``) or every UNet weight (``full``)."""
        return [p for p in self.raw.parameters() if p.requires_grad]

    # -- inputs ------------------------------------------------------------------------------------
    def _resize(self, x: torch.Tensor, *, nearest: bool = False) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if x.shape[-1] == self.resolution and x.shape[-2] == self.resolution:
            return x
        if nearest:
            return F.interpolate(x, size=(self.resolution,) * 2, mode="nearest")
        return F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)

    @torch.no_grad()
    def encode(self, gray: torch.Tensor) -> torch.Tensor:
        """(B,1|3,R,R) image in [0,1] → latents s·E(x) (B,4,R/f,R/f), float32.

        The posterior *mean* (``latent_dist.mode()``), not a sample: deterministic, so the winner,
        the loser and the masked image of one pair are encoded alike and cached latents are exact;
        SD's posterior std is ~1e-2 of its mean's scale, so little is lost.
        """
        rgb = gray.expand(-1, 3, -1, -1) if gray.shape[1] == 1 else gray
        x = (rgb * 2 - 1).to(self.weight_dtype)
        return self.vae.encode(x).latent_dist.mode().float() * self.scaling

    def condition(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """The UNet's extra 5 channels ``[m↓, s·E(x⊙(1−m))]`` (B,5,R/f,R/f) for (B,1,R,R) inputs.

        As the pipeline: masked image = the image with hole pixels set to 0 in [−1,1] (mid grey),
        the mask downsampled to latent size by nearest neighbour."""
        rgb = image.expand(-1, 3, -1, -1)
        keep = (hole < 0.5).to(rgb.dtype)
        masked = (rgb * 2 - 1) * keep  # 0 (grey) inside the hole, in [-1,1]
        masked_latents = self.encode((masked + 1) / 2)
        side = self.resolution // self.vae_factor
        mask_latent = F.interpolate(hole, size=(side, side), mode="nearest")
        return torch.cat([mask_latent, masked_latents], dim=1)

    def latent_region(self, hole: torch.Tensor) -> torch.Tensor:
        """Latent cells that touch the hole (max-pool of the (B,1,R,R) hole to latent size)."""
        return F.adaptive_max_pool2d(hole, self.resolution // self.vae_factor)

    def reference_batch(self, batch):
        """(z0, cond, weight) of a ``ReferenceDataset`` batch at latent size R/f: z0 = s·E(target)
        (B,4,·,·), cond (B,5,·,·), region weights (B,1,·,·)."""
        image, hole = self._resize(batch["image"]), self._resize(batch["hole"], nearest=True)
        target, weight = self._resize(batch["target"]), self._resize(batch["weight"])
        side = self.resolution // self.vae_factor
        # region weights per latent cell: the mean weight of its f×f pixels
        w = F.adaptive_avg_pool2d(weight, side)
        return self.encode(target), self.condition(image, hole), w

    def pair_batch(self, batch):
        """(z_w, z_l, cond, region) of a pair batch: both latents (B,4,·,·) share cond (B,5,·,·);
        region = the latent cells the hole touches (B,1,·,·), for ``region: hole`` errors."""
        image, hole = self._resize(batch["image"]), self._resize(batch["hole"], nearest=True)
        z_w, z_l = self.encode(self._resize(batch["winner"])), self.encode(self._resize(batch["loser"]))
        return z_w, z_l, self.condition(image, hole), self.latent_region(hole)

    # -- forward -----------------------------------------------------------------------------------
    def _forward(self, unet, x_t, cond, t):
        """UNet([x_t, m↓, masked latents], t, prompt embeddings) → (B,4,·,·)."""
        emb = self.prompt_embeds.expand(x_t.shape[0], -1, -1)
        return unet(torch.cat([x_t, cond], dim=1), t.to(x_t.device), encoder_hidden_states=emb).sample

    def predict(self, x_t, cond, t):
        """The policy's output (ε or v) for x_t (B,4,·,·), cond (B,5,·,·), t (B,)."""
        return self._forward(self.model, x_t, cond, t)

    @torch.no_grad()
    def predict_reference(self, x_t, cond, t):
        """The frozen reference's output: the same UNet with the policy adapter switched off
        (disabled, or the reference LoRA active instead). Call it *before* the policy's forward
        of the step: peft's enable/disable/set_adapter reset ``requires_grad`` of the adapters."""
        with self.reference_mode() as unet:
            return self._forward(unet, x_t, cond, t)

    @contextlib.contextmanager
    def reference_mode(self):
        """Context in which the yielded module computes the reference; restores the policy after."""
        if self.reference is not None:
            yield self.reference
            return
        unet = self.raw
        if self.has_reference_adapter:
            unet.set_adapter(REFERENCE)
            try:
                yield unet
            finally:
                unet.set_adapter(POLICY)
            return
        unet.disable_adapters()
        try:
            yield unet
        finally:
            unet.enable_adapters()

    def image_estimate(self, x0_hat, cond, batch):
        """The MI / no-copy terms' x̂0, **decoded**: D(ẑ0/s) → grey [0,1] (B,1,R,R).

        Decoded, not latent, because both terms are defined on image intensities: the Parzen MI of
        ``mask_mi_loss`` bins values in [0,1] and weights *pixels* by (1 − m), and the no-copy
        correlation compares the fill with the lesion pixel by pixel. SD latents are unbounded,
        4-channel and f = 8× coarser, so a latent cell on the mask's edge mixes lesion and
        context and the histogram has no fixed range. The cost is a backward through the frozen
        VAE decoder on the winner half of the batch (only when mi_weight or copy_weight > 0).
        Returns (x̂0 image, input image, hole, coarse lesion-free fill), all (B,1,R,R)."""
        image, hole = self._resize(batch["image"]), self._resize(batch["hole"], nearest=True)
        dec = self.vae.decode((x0_hat / self.scaling).to(self.weight_dtype)).sample.float()
        x0_img = ((dec + 1) / 2).mean(dim=1, keepdim=True)
        with torch.no_grad():
            coarse = pixel_unet.condition(image, hole, pixel_unet.PixelUNetConfig())[:, 2:3]
        return x0_img, image, hole, coarse

    # -- checkpoints -------------------------------------------------------------------------------
    def register_checkpoint_hooks(self, accelerator) -> None:
        """With LoRA, ``accelerator.save_state`` writes only the policy adapter (peft state dict,
        ``policy_lora.safetensors``) instead of the whole UNet, and ``load_state`` loads it back
        into the adapter (the pattern of diffusers' LoRA training scripts); optimiser, scheduler,
        RNG and registered objects are saved as usual. Full fine-tuning keeps accelerate's default."""
        if self.cfg.adapter != "lora":
            return
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        raw = self.raw

        def is_ours(model) -> bool:
            return accelerator.unwrap_model(model) is raw

        def save_hook(models, weights, output_dir):
            for i in reversed(range(len(models))):
                if is_ours(models[i]):
                    state = get_peft_model_state_dict(raw, adapter_name=POLICY)
                    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                              str(Path(output_dir) / "policy_lora.safetensors"))
                    weights.pop(i)

        def load_hook(models, input_dir):
            for i in reversed(range(len(models))):
                if is_ours(models[i]):
                    state = load_file(str(Path(input_dir) / "policy_lora.safetensors"))
                    res = set_peft_model_state_dict(raw, state, adapter_name=POLICY)
                    if getattr(res, "unexpected_keys", None):
                        raise ValueError(f"{input_dir}: unexpected LoRA keys {res.unexpected_keys[:3]}")
                    models.pop(i)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    # -- outputs -----------------------------------------------------------------------------------
    def inference_backend(self, unwrap=lambda m: m):
        """The pipeline with the live UNet (policy adapters on) as a ``FillBackend``."""
        return self.inference

    def save(self, out_dir, extra: dict, unwrap=lambda m: m) -> Path:
        """LoRA: diffusers LoRA dir (``save_lora``); full: the whole pipeline (``save_pretrained``)."""
        meta = {"base": str(self.cfg.pretrained), "base_hash": self.base_hash,
                "reference_lora": self.reference_lora, **extra}
        if self.cfg.adapter == "lora":
            return save_lora(self.raw, out_dir, extra=meta)
        out = Path(out_dir)
        self.pipe.save_pretrained(out)
        (out / LORA_META.replace("lora", "train")).write_text(
            json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        return out


def build_sd_backend(model: Any, **kwargs) -> SDInpaintTrainBackend:
    """``SDInpaintTrainBackend`` from a ``GeneratorModelConfig``/``DpoModelConfig`` (its ``sd``)."""
    return SDInpaintTrainBackend(model.sd, **kwargs)
