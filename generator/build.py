"""Registry of generator backends: the only place that knows checkpoint layouts, sizes and paths.

Checkpoint layouts
- ``pixel``: ``DIR/unet/`` (diffusers ``UNet2DModel.save_pretrained``), ``DIR/scheduler/``
  (``DDIMScheduler``), ``DIR/generator_config.json`` (``{"backend": "pixel", "pixel": {...}}``
  plus how it was trained). diffusers alone loads the UNet.
- ``sd-inpaint``: a diffusers ``StableDiffusionInpaintPipeline`` directory (``model_index.json``)
  or a hub id already in the local cache (never downloaded at run time), optionally plus a LoRA
  directory in diffusers' format (``pytorch_lora_weights.safetensors``, loaded with
  ``pipe.load_lora_weights``; written by ``generator.sd_backend.save_lora``). The checkpoint hash
  then covers both (``generator.sd_backend.lora_hash``). A LoRA directory whose
  ``generator_lora.json`` names its base can also be loaded on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

from generator.kriging import PRIORS
from generator.modeling import pixel_unet, sd_inpaint
from generator.predictor import NegativeGenerator
from shared.config import ConfigError, missing_path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "pixel_reference"  # the embedded default (committed)
CONFIG_NAME = "generator_config.json"


def hash_directory(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class PixelBackend:
    """Pixel-space conditional UNet + DDIM (η from config) at the checkpoint's resolution."""

    name = "pixel"
    channels = 1

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, cfg: pixel_unet.PixelUNetConfig):
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.cfg = cfg
        self.resolution = cfg.resolution
        # a conv-only UNet runs on any grid: window mode fills views up to twice its training size
        # at their own scale (NegativeGenerator); with attention it stays at its own resolution
        self.max_side = cfg.resolution * (1 if cfg.attention_levels else 2)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def coarse(self, images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        """The classical fill the model's residual is added to (its conditioning's coarse channel)."""
        return pixel_unet.condition(images.to(self.device), holes.to(self.device), self.cfg)[:, 2:3]

    def fill(
        self,
        images: torch.Tensor,
        holes: torch.Tensor,
        generators: Sequence[torch.Generator],
        *,
        steps: int,
        strength: float,
        see_through_px: float = 0.0,
    ) -> np.ndarray:
        images = images.to(self.device)
        holes = holes.to(self.device)
        cond = pixel_unet.condition(images, holes, self.cfg)
        out = pixel_unet.sample(
            self.unet, self.scheduler, cond, generators,
            cfg=self.cfg, steps=steps, strength=strength, init=images, see_through_px=see_through_px,
        )
        return out.permute(0, 2, 3, 1).float().cpu().numpy()


class SDInpaintBackend:
    """``StableDiffusionInpaintPipeline`` with the fixed healthy-tissue prompt (embedded once)."""

    name = "sd-inpaint"
    channels = 3

    def __init__(self, pipe, prompt: str = sd_inpaint.HEALTHY_PROMPT):
        self.pipe = pipe
        self.prompt_embeds = sd_inpaint.encode_prompt(pipe, prompt)
        self.resolution = sd_inpaint.resolution(pipe)
        self.max_side = self.resolution  # fixed size: windows are resized to it

    def fill(self, images, holes, generators, *, steps, strength, see_through_px=0.0) -> np.ndarray:
        if see_through_px > 0:
            raise ValueError("see_through_px is implemented by the pixel backend only")
        device = self.pipe.device
        return sd_inpaint.inpaint(
            self.pipe, self.prompt_embeds, images.to(device), holes.to(device), generators,
            steps=steps, strength=strength,
        )


def save_pixel_checkpoint(
    out_dir: str | Path,
    unet: UNet2DModel,
    cfg: pixel_unet.PixelUNetConfig,
    *,
    extra: dict[str, Any] | None = None,
    fp16: bool = True,
) -> Path:
    """Write the ``pixel`` layout; ``fp16`` halves the committed size (loaded back as float32)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_unet = unet
    if fp16:
        state_unet = pixel_unet.build_unet(cfg)
        state_unet.load_state_dict(unet.state_dict())
        state_unet = state_unet.to(torch.float16)
    state_unet.save_pretrained(out / "unet", safe_serialization=True)
    pixel_unet.build_scheduler(cfg, kind="ddim").save_pretrained(out / "scheduler")
    meta = {"backend": "pixel", "pixel": pixel_unet.config_dict(cfg), **(extra or {})}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_pixel_config(path: str | Path) -> pixel_unet.PixelUNetConfig:
    meta = json.loads((Path(path) / CONFIG_NAME).read_text())
    if meta.get("backend") != "pixel":
        raise ConfigError(f"{path}/{CONFIG_NAME}: backend is {meta.get('backend')!r}, not 'pixel'")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["pixel"].items()}
    return pixel_unet.PixelUNetConfig(**fields)


def load_pixel(path: str | Path, *, device: str = "cpu") -> tuple[PixelBackend, str]:
    path = Path(path)
    cfg = read_pixel_config(path)
    unet = UNet2DModel.from_pretrained(path / "unet", dtype=torch.float32).to(device)
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    return PixelBackend(unet, scheduler, cfg), hash_directory(path)


def resolve_local(path_or_id: str | Path) -> Path:
    """A pipeline directory: ``path_or_id`` itself, or the hub id's snapshot in the local cache."""
    local = Path(path_or_id)
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(str(path_or_id), local_files_only=True))
    return local


def load_sd_inpaint(
    path_or_id: str | Path, *, device: str = "cpu", lora: str | Path | None = None
) -> tuple[SDInpaintBackend, str]:
    """The pipeline at ``path_or_id`` (+ the diffusers LoRA dir ``lora``, unfused) and its hash."""
    from generator.sd_backend import lora_hash

    pipe = sd_inpaint.load_pipeline(path_or_id, device=device)
    digest = hash_directory(resolve_local(path_or_id))
    if lora:
        if not (Path(lora) / "pytorch_lora_weights.safetensors").is_file():
            raise ConfigError(f"{lora}: not a diffusers LoRA dir (no pytorch_lora_weights.safetensors)")
        pipe.load_lora_weights(str(lora))
        digest = lora_hash(digest, lora)
    return SDInpaintBackend(pipe), digest


def checkpoint_window(path: str | Path) -> str:
    """How a pixel checkpoint is meant to be run: ``"lesion"`` when it was trained on windows
    (``generator.windows``: its training config has ``data.window_p`` > 0, or it says so under
    ``inference.window``), else ``"whole"`` (the whole-image models trained before windows)."""
    meta = json.loads((Path(path) / CONFIG_NAME).read_text())
    if "window" in meta.get("inference", {}):
        return meta["inference"]["window"]
    return "lesion" if meta.get("train", {}).get("data", {}).get("window_p", 0) > 0 else "whole"


def checkpoint_native_coarse(path: str | Path) -> bool:
    """Whether a pixel checkpoint puts its learned residual on a native-resolution biharmonic fill
    where a window is zoomed out onto its grid (``NegativeGenerator.native_coarse``): its
    ``inference.native_coarse`` (written by window training since session 12), else False."""
    return _inference_flag(path, "native_coarse")


def checkpoint_texture_match(path: str | Path) -> bool:
    """Whether a pixel checkpoint contributes only ring-matched texture on an exact biharmonic fill
    (``NegativeGenerator.texture_match``): its ``inference.texture_match``, else False."""
    return _inference_flag(path, "texture_match")


def checkpoint_coarse_prior(path: str | Path) -> str:
    """The classical fill a pixel checkpoint's native compositions put its learned part on
    (``NegativeGenerator.coarse_prior``): its ``inference.coarse_prior``, else ``"biharmonic"``."""
    meta = json.loads((Path(path) / CONFIG_NAME).read_text())
    return str(meta.get("inference", {}).get("coarse_prior", "biharmonic"))


def checkpoint_texture_lowcut(path: str | Path) -> float:
    """The σ (input px) of the band a texture-matched pixel checkpoint removes from its learned
    texture (``NegativeGenerator.texture_lowcut_sigma``): its ``inference.texture_lowcut_sigma``,
    else 0 (off)."""
    meta = json.loads((Path(path) / CONFIG_NAME).read_text())
    return float(meta.get("inference", {}).get("texture_lowcut_sigma", 0.0))


def _inference_flag(path: str | Path, name: str) -> bool:
    meta = json.loads((Path(path) / CONFIG_NAME).read_text())
    return bool(meta.get("inference", {}).get(name, False))


def load_generator(
    path_or_name: str | Path | None = None, *, device: str = "cpu", batch_size: int = 1,
    window: str | None = None, window_context: float = 4.0, lora: str | Path | None = None,
    native_coarse: bool | None = None, texture_match: bool | None = None,
    coarse_prior: str | None = None, texture_lowcut_sigma: float | None = None,
) -> NegativeGenerator:
    """Load a generator.

    None or ``"pixel"`` → the embedded default (``generator/weights/pixel_reference``); a directory
    → that checkpoint (``pixel`` if it holds ``generator_config.json``, ``sd-inpaint`` if it holds
    ``model_index.json``, base + LoRA if it is a LoRA dir whose ``generator_lora.json`` names its
    base); any other string → a hub id for ``sd-inpaint``, from the local cache only.
    ``lora``: a diffusers LoRA dir applied on top of an ``sd-inpaint`` base (None = none).
    ``window`` / ``window_context``: what the backend sees of each image (``NegativeGenerator``);
    None = as the checkpoint was trained (:func:`checkpoint_window`; ``"whole"`` for SD-inpaint).
    ``native_coarse``: None = as the checkpoint says (:func:`checkpoint_native_coarse`; pixel only).
    ``texture_match``: None = as the checkpoint says (:func:`checkpoint_texture_match`; pixel only).
    ``coarse_prior``: ``"biharmonic"`` / ``"kriging"`` / ``"stacked"``; None = as the checkpoint says
    (:func:`checkpoint_coarse_prior`; pixel only).
    ``texture_lowcut_sigma``: None = as the checkpoint says (:func:`checkpoint_texture_lowcut`;
    pixel only).
    """
    if coarse_prior not in (None, *PRIORS):
        raise ConfigError(f"coarse prior {coarse_prior!r}: expected one of {', '.join(PRIORS)}")
    if path_or_name is None or str(path_or_name) == "pixel":
        path_or_name = DEFAULT_CHECKPOINT
    path = Path(path_or_name)
    lora_meta = path / "generator_lora.json"
    if lora is None and path.is_dir() and lora_meta.is_file() and not (path / CONFIG_NAME).is_file():
        base = json.loads(lora_meta.read_text()).get("base")
        if not base:
            raise ConfigError(f"{lora_meta}: names no base pipeline; pass it with the LoRA")
        path, path_or_name, lora = Path(base), base, path
    if lora and path.is_dir() and (path / CONFIG_NAME).is_file():
        raise ConfigError(f"{path}: a pixel checkpoint takes no LoRA ({lora})")
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        backend, digest = load_pixel(path, device=device)
        own = {"window": checkpoint_window(path), "native_coarse": checkpoint_native_coarse(path),
               "texture_match": checkpoint_texture_match(path),
               "coarse_prior": checkpoint_coarse_prior(path),
               "texture_lowcut_sigma": checkpoint_texture_lowcut(path)}
        asked = {"window": window, "native_coarse": native_coarse, "texture_match": texture_match,
                 "coarse_prior": coarse_prior, "texture_lowcut_sigma": texture_lowcut_sigma}
        # an override that changes the outputs changes the hash (content-addressed stores and
        # caches key on it); as the checkpoint says, the hash is the checkpoint's own
        changed = {k: v for k, v in asked.items() if v is not None and v != own[k]}
        if changed:
            digest = hashlib.sha256(f"{digest}|{json.dumps(changed, sort_keys=True)}".encode()).hexdigest()
        window, native_coarse, texture_match, coarse_prior, texture_lowcut_sigma = (
            {**own, **changed}[k] for k in own)
        if texture_lowcut_sigma:  # so is the number of band-removal passes
            from generator.compose import LOWCUT_PASSES

            digest = hashlib.sha256(f"{digest}|lowcut passes {LOWCUT_PASSES}".encode()).hexdigest()
        from generator.kriging import prior_rule

        if rule := prior_rule(coarse_prior):  # the classical rule is part of what the outputs are
            digest = hashlib.sha256(f"{digest}|{rule}".encode()).hexdigest()
    elif native_coarse or texture_match or coarse_prior not in (None, "biharmonic") or \
            texture_lowcut_sigma:
        raise ConfigError(f"{path_or_name}: native_coarse / texture_match / coarse_prior / "
                          "texture_lowcut_sigma apply to "
                          "pixel checkpoints only (they compose on the pixel model's coarse channel)")
    elif path.is_dir() and (path / "model_index.json").is_file():
        backend, digest = load_sd_inpaint(path, device=device, lora=lora)
    elif path.exists():
        raise ConfigError(
            f"{path}: neither a pixel checkpoint ({CONFIG_NAME}) nor a diffusers pipeline "
            "(model_index.json)"
        )
    elif missing_path(str(path_or_name)):
        raise ConfigError(f"{path_or_name}: no such checkpoint folder (a hub id reads org/name)")
    else:
        backend, digest = load_sd_inpaint(str(path_or_name), device=device, lora=lora)
    return NegativeGenerator(backend, checkpoint_hash=digest, batch_size=batch_size,
                             window=window or "whole", window_context=window_context,
                             native_coarse=bool(native_coarse), texture_match=bool(texture_match),
                             coarse_prior=coarse_prior or "biharmonic",
                             texture_lowcut_sigma=texture_lowcut_sigma or 0.0)
