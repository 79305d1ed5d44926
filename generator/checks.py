"""Config checks of the generator's training entry points (reference, DPO, scorers).

Each ``check_*`` raises a one-line ``ConfigError`` naming the field and its value for a setting
that would otherwise fail after the data and model have loaded (or mid-run), or be ignored
silently (a misspelt held-out domain trained on). ``generator.train``, ``generator.dpo`` and
``generator.train_scorers`` call them right after their config loads, before anything else.
Domain names are checked against the benchmark manifest's when its folder exists (a missing
folder is named by the loader).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from generator.backends import BACKENDS, WEIGHT_DTYPES, pixel_config
from generator.modeling import pixel_unet
from generator.pairs import read_pairs
from shared.config import ConfigError, check_out_dir, missing_path
from shared.datasets import SPLITS

if TYPE_CHECKING:
    from generator.data import DataConfig
    from generator.dpo_config import DpoConfig
    from generator.sd_backend import SDModelConfig
    from generator.train import TrainConfig
    from generator.train_scorers import ScorerTrainConfig
    from generator.windows import WindowConfig


# -- shared pieces and the data section ---------------------------------------------------------
def need(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def need_unit(key: str, value: float) -> None:
    """``value`` (field ``key``) must lie in [0, 1]."""
    need(0.0 <= value <= 1.0, f"{key} must lie in [0, 1], got {value}")


def need_range(key: str, pair: tuple[float, float], low: float, *, strict: bool = False) -> None:
    """``pair`` (field ``key``) must be a (lo, hi) range with ``low`` <= lo <= hi (< with strict)."""
    lo, hi = pair
    ok = (lo > low if strict else lo >= low) and lo <= hi and math.isfinite(hi)
    need(ok, f"{key} must be [lo, hi] with {low} {'<' if strict else '<='} lo <= hi, got {list(pair)}")


def check_window_config(cfg: WindowConfig, prefix: str = "data.windows.") -> None:
    """``WindowConfig`` values that would fail in a DataLoader worker (log of a zero zoom, a
    zero-size window) or draw nonsense (a hole wider than its window)."""
    from shared.benchmark.sources import check_training_sources

    need(len(cfg.sources) > 0, f"{prefix}sources is empty; choose from the training sources")
    try:
        check_training_sources(tuple(cfg.sources))
    except ValueError as err:
        raise ConfigError(f"{prefix}sources={list(cfg.sources)}: {err}") from None
    need(cfg.size >= 1, f"{prefix}size must be >= 1, got {cfg.size}")
    need_range(prefix + "zoom", cfg.zoom, 0.0, strict=True)
    need_range(prefix + "context", cfg.context, 1.0)  # window side / hole diameter: the hole fits
    for key in ("elastic_p", "noise_p", "blur_p", "min_tissue"):
        need_unit(prefix + key, getattr(cfg, key))
    for key in ("elastic_px", "elastic_sigma", "min_std"):
        need(getattr(cfg, key) >= 0, f"{prefix}{key} must be >= 0, got {getattr(cfg, key)}")
    need_range(prefix + "contrast", cfg.contrast, 0.0)
    need_range(prefix + "gamma", cfg.gamma, 0.0, strict=True)
    need_range(prefix + "noise_std", cfg.noise_std, 0.0)
    need_range(prefix + "blur_sigma", cfg.blur_sigma, 0.0)


def manifest_items(root: str | Path) -> list | None:
    """The benchmark items at ``root``; None when ``root`` does not exist (the data loader names a
    missing root itself: ``shared.benchmark.load_manifest``)."""
    from shared.benchmark import load_manifest

    return load_manifest(root) if Path(root).exists() else None


def check_domain(key: str, value: str, root: str | Path, domains: list[str], *,
                 empty: str = "") -> None:
    """``value`` (the config field ``key``) must be one of the manifest's ``domains``; a misspelt
    domain would otherwise select nothing, silently. ``empty``: what "" means, if it is allowed."""
    if value == "" and empty:
        return
    if value not in domains:
        also = f"; '' {empty}" if empty else ""
        raise ConfigError(f"{key}={value!r} is not a domain of {root} (it has {domains}{also})")


def check_data_config(cfg: DataConfig, prefix: str = "data.") -> None:
    """One-line ``ConfigError`` naming the field for a ``DataConfig`` value that would fail deep
    in a run or be ignored silently. Domain names are checked against the manifest's when
    ``cfg.root`` exists (a missing root is named by the loader)."""
    if cfg.split not in SPLITS:
        raise ConfigError(f"{prefix}split={cfg.split!r}; expected {' | '.join(SPLITS)}")
    for key in ("p_self_supervised", "photometric_p", "blur_p", "window_p", "tissue_threshold"):
        need_unit(prefix + key, getattr(cfg, key))
    need(cfg.max_dilation_px >= 0, f"{prefix}max_dilation_px must be >= 0, got {cfg.max_dilation_px}")
    need_range(prefix + "contrast_range", cfg.contrast_range, 0.0)
    need_range(prefix + "gamma_range", cfg.gamma_range, 0.0, strict=True)
    need_range(prefix + "blur_sigma", cfg.blur_sigma, 0.0)
    if cfg.aux_healthy:
        from shared.benchmark.anatomy import AUX_SOURCES

        unknown = [n for n in cfg.aux_healthy if n not in AUX_SOURCES]
        if unknown:
            raise ConfigError(f"{prefix}aux_healthy: unknown auxiliary anatomy {unknown}; choose "
                              f"from {sorted(AUX_SOURCES)}")
    need(cfg.aux_per_source >= 0,  # 0 turns aux_healthy off (scripts/train_generator_gpu.sh noaug)
         f"{prefix}aux_per_source must be >= 0, got {cfg.aux_per_source}")
    check_window_config(cfg.windows, prefix + "windows.")
    items = manifest_items(cfg.root)
    if items is None:
        return
    domains = sorted({it.domain for it in items})
    check_domain(prefix + "held_out_domain", cfg.held_out_domain, cfg.root, domains,
                 empty="holds nothing out")
    for name in cfg.train_domains:
        check_domain(prefix + "train_domains", name, cfg.root, domains)
    if cfg.held_out_domain in cfg.train_domains:
        raise ConfigError(f"held-out domain {cfg.held_out_domain!r} ({prefix}held_out_domain) is also "
                          f"a training domain ({prefix}train_domains={list(cfg.train_domains)})")
    train = set(cfg.train_domains) or set(domains) - {cfg.held_out_domain}
    if not any(it.domain in train and it.split == cfg.split for it in items):
        raise ConfigError(f"{cfg.root}: no {cfg.split!r} items ({prefix}split) in the training "
                          f"domains {sorted(train)}")


# -- reference training (generator.train) ------------------------------------------------------
LR_SCHEDULES = ("cosine", "constant")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # pixel_unet.PixelUNetConfig


def check_pixel_checkpoint(key: str, value: str) -> Path:
    """``value`` (field ``key``) must be a pixel checkpoint folder (``generator_config.json``)."""
    from generator.build import CONFIG_NAME

    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"{key}={value}: no such checkpoint folder")
    if not (path / CONFIG_NAME).is_file():
        raise ConfigError(f"{key}={value}: not a pixel checkpoint folder (no {CONFIG_NAME})")
    return path


def check_pixel_model(m: pixel_unet.PixelUNetConfig, prefix: str = "model.") -> None:
    """The pixel UNet's fields: what ``UNet2DModel`` / the scheduler would refuse after the data
    has loaded (or, for widths GroupNorm cannot split, deep inside the first forward)."""
    widths = tuple(m.block_out_channels)
    need(m.resolution >= 1, f"{prefix}resolution must be >= 1, got {m.resolution}")
    need(len(widths) > 0 and min(widths) >= 1,
         f"{prefix}block_out_channels must be positive widths, got {list(widths)}")
    need(m.layers_per_block >= 1, f"{prefix}layers_per_block must be >= 1, got {m.layers_per_block}")
    need(all(0 <= a < len(widths) for a in m.attention_levels),
         f"{prefix}attention_levels={list(m.attention_levels)}: levels are 0..{len(widths) - 1}")
    need(m.norm_num_groups >= 1 and all(w % m.norm_num_groups == 0 for w in widths),
         f"{prefix}norm_num_groups={m.norm_num_groups} must divide every width of "
         f"{prefix}block_out_channels={list(widths)}")
    need(m.prediction_type in PREDICTION_TYPES,
         f"{prefix}prediction_type={m.prediction_type!r}; expected {' | '.join(PREDICTION_TYPES)}")
    need(m.num_train_timesteps >= 1,
         f"{prefix}num_train_timesteps must be >= 1, got {m.num_train_timesteps}")
    try:
        pixel_unet.build_scheduler(m, kind="ddpm")
    except (ValueError, NotImplementedError) as err:
        raise ConfigError(f"{prefix}beta_schedule={m.beta_schedule!r}: {err}") from None
    need(m.residual_scale > 0, f"{prefix}residual_scale must be > 0, got {m.residual_scale}")
    need(m.coarse_levels >= 1, f"{prefix}coarse_levels must be >= 1, got {m.coarse_levels}")
    for key in ("harmonic_iters", "biharmonic_iters", "see_through_sigma"):
        need(getattr(m, key) >= 0, f"{prefix}{key} must be >= 0, got {getattr(m, key)}")
    need_unit(prefix + "eta", m.eta)


def check_sd_model(sd: SDModelConfig, prefix: str = "model.sd.") -> None:
    """The ``sd-inpaint`` section, checked before the pipeline loads."""
    need(bool(sd.pretrained), f"{prefix}pretrained: name the StableDiffusionInpaintPipeline directory")
    need(sd.adapter in ("lora", "full"), f"{prefix}adapter={sd.adapter!r}; expected lora | full")
    need(sd.lora_rank >= 1, f"{prefix}lora_rank must be >= 1, got {sd.lora_rank}")
    need(sd.resolution >= 0, f"{prefix}resolution must be >= 0 (0 = the pipeline's), got {sd.resolution}")
    need(not missing_path(sd.pretrained), f"{prefix}pretrained={sd.pretrained}: no such pipeline "
         "folder (a hub id reads org/name)")
    need(not sd.init_lora or Path(sd.init_lora).is_dir(),
         f"{prefix}init_lora={sd.init_lora}: no such LoRA folder")
    factor = vae_factor(sd.pretrained)
    need(not (sd.resolution and factor and sd.resolution % factor),
         f"{prefix}resolution={sd.resolution} is not a multiple of the pipeline's VAE factor {factor}")


def vae_factor(pretrained: str) -> int | None:
    """The pixel-to-latent factor of a local pipeline folder's VAE (2 ** (levels − 1), what
    diffusers' ``vae_scale_factor`` computes), read from ``vae/config.json`` without loading the
    model; None for a hub id or a folder without a readable VAE config (checked after loading)."""
    import json

    try:
        blocks = json.loads((Path(pretrained).expanduser() / "vae" / "config.json").read_text())[
            "block_out_channels"]
        return 2 ** (len(blocks) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_common_optim(o, prefix: str = "optim.") -> None:
    """Fields the reference and DPO optimiser sections share (``OptimConfig``, ``DpoOptimConfig``)."""
    for key in ("steps", "batch_size", "gradient_accumulation_steps", "num_threads", "log_every"):
        need(getattr(o, key) >= 1, f"{prefix}{key} must be >= 1, got {getattr(o, key)}")
    for key in ("checkpoint_every", "seed"):
        need(getattr(o, key) >= 0, f"{prefix}{key} must be >= 0, got {getattr(o, key)}")
    need(o.lr > 0 and math.isfinite(o.lr), f"{prefix}lr must be > 0, got {o.lr}")
    need(o.grad_clip > 0, f"{prefix}grad_clip must be > 0, got {o.grad_clip}")
    need(o.mixed_precision in WEIGHT_DTYPES,
         f"{prefix}mixed_precision={o.mixed_precision!r}; expected {' | '.join(WEIGHT_DTYPES)}")
    if o.use_8bit_adam:
        import importlib.util

        need(importlib.util.find_spec("bitsandbytes") is not None,
             f"{prefix}use_8bit_adam=true needs bitsandbytes, which is not importable here; pip "
             "install bitsandbytes or set it false")


def check_train_config(cfg: TrainConfig) -> None:
    """One-line errors naming the field for values that would otherwise fail after the data and
    model have loaded (or never, training on something else); called before anything loads."""
    o = cfg.optim
    check_out_dir("output_dir", cfg.output_dir)
    check_common_optim(o)
    for key in ("warmup_steps", "crop", "num_workers"):
        need(getattr(o, key) >= 0, f"optim.{key} must be >= 0, got {getattr(o, key)}")
    need(o.lr_schedule in LR_SCHEDULES,
         f"optim.lr_schedule={o.lr_schedule!r}; expected {' | '.join(LR_SCHEDULES)}")
    need(o.max_minutes >= 0, f"optim.max_minutes must be >= 0 (0 = no limit), got {o.max_minutes}")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    need_unit("optim.ema_decay", o.ema_decay)
    for key in ("hole", "context", "tumor"):
        need(getattr(cfg.weights, key) >= 0,
             f"weights.{key} must be >= 0, got {getattr(cfg.weights, key)}")
    m = cfg.model
    need(m.backend in BACKENDS, f"model.backend={m.backend!r}; expected {' | '.join(BACKENDS)}")
    from generator.kriging import PRIORS

    need(cfg.inference.coarse_prior in PRIORS,
         f"inference.coarse_prior={cfg.inference.coarse_prior!r}; expected {' | '.join(PRIORS)}")
    if m.backend == "sd-inpaint":
        need(not cfg.inference.texture_match and cfg.inference.coarse_prior == "biharmonic",
             "inference.texture_match / coarse_prior apply to pixel checkpoints only")
        need(not cfg.init_from, f"init_from={cfg.init_from}: init_from is for pixel checkpoints; "
             "use model.sd.init_lora")
        check_sd_model(m.sd)
    else:
        check_pixel_model(m)
        levels = len(m.block_out_channels)  # the UNet halves its input levels - 1 times
        why = (f"must be a multiple of {2 ** (levels - 1)} (a {levels}-level UNet halves it "
               f"{levels - 1} times)")
        if cfg.data.window_p > 0:
            need(cfg.data.windows.size % 2 ** (levels - 1) == 0,
                 f"data.windows.size={cfg.data.windows.size} {why}")
        need(o.crop % 2 ** (levels - 1) == 0, f"optim.crop={o.crop} {why}")
    if cfg.init_from:
        from dataclasses import fields, replace

        from generator.build import read_pixel_config

        path = check_pixel_checkpoint("init_from", cfg.init_from)
        src, run = read_pixel_config(path), pixel_config(m)
        see = dict(see_through=run.see_through, see_through_sigma=run.see_through_sigma)
        src = replace(src, **see)
        diff = [f"{f.name}: {getattr(src, f.name)!r} vs {getattr(run, f.name)!r}"
                for f in fields(run) if getattr(src, f.name) != getattr(run, f.name)]
        need(not diff, f"init_from={cfg.init_from}: its model config differs from the run's model "
             f"(checkpoint vs model.*) in {'; '.join(diff)}; only the see-through fields may differ")
    check_data_config(cfg.data)


# -- DPO (generator.dpo) -----------------------------------------------------------------------
LOSS_REGIONS = ("hole", "all")  # LossConfig.region
PAIR_KINDS = ("sample", "gt", "positive")  # generator.pairs.PairRow.kind


def check_dpo_config(cfg: DpoConfig) -> None:
    """One-line errors naming the field for values that would otherwise fail after the reference
    and the pairs have loaded (or never: a misspelt region or held-out domain ran on silently);
    called before anything loads. ``held_out_domain`` is checked against ``val.root``'s manifest
    when that folder exists (a missing one is named by the loader)."""
    check_out_dir("output_dir", cfg.output_dir)
    o = cfg.optim
    check_common_optim(o)
    need(o.val_every >= 1, f"optim.val_every must be >= 1, got {o.val_every}")
    m = cfg.model
    need(m.backend in BACKENDS, f"model.backend={m.backend!r}; expected {' | '.join(BACKENDS)}")
    if m.backend == "sd-inpaint":
        need(not m.sd.init_lora, f"model.sd.init_lora={m.sd.init_lora}: DPO starts from `reference` "
             "(a LoRA dir); leave model.sd.init_lora empty")
        check_sd_model(m.sd)
        need(not cfg.reference or Path(cfg.reference).is_dir(),
             f"reference={cfg.reference}: no such LoRA folder")
    elif cfg.reference:
        check_pixel_checkpoint("reference", cfg.reference)
    bad = [k for k in cfg.pair_kinds if k not in PAIR_KINDS]
    need(bool(cfg.pair_kinds) and not bad,
         f"pair_kinds={list(cfg.pair_kinds)}; choose from {' | '.join(PAIR_KINDS)}")
    lo = cfg.loss
    need(lo.beta > 0, f"loss.beta must be > 0, got {lo.beta}")
    need(lo.region in LOSS_REGIONS, f"loss.region={lo.region!r}; expected {' | '.join(LOSS_REGIONS)}")
    need_unit("loss.mu", lo.mu)
    for key in ("sdpo_from_step", "sft_weight", "mi_weight", "copy_weight"):
        need(getattr(lo, key) >= 0, f"loss.{key} must be >= 0, got {getattr(lo, key)}")
    for key in ("stages", "steps_per_stage"):
        value = getattr(cfg.curriculum, key)
        need(value >= 1, f"curriculum.{key} must be >= 1, got {value}")
    v = cfg.val
    need(v.split in SPLITS, f"val.split={v.split!r}; expected {' | '.join(SPLITS)}")
    need(v.max_items >= 0, f"val.max_items must be >= 0 (0 = all), got {v.max_items}")
    need(v.steps >= 1, f"val.steps must be >= 1, got {v.steps}")
    items = manifest_items(v.root)
    if items is None:
        return
    check_domain("held_out_domain", cfg.held_out_domain, v.root,
                 sorted({it.domain for it in items}), empty="holds nothing out")
    need(any(it.split == v.split and it.label == "tumor" and it.gt_negative is not None
             and it.domain != cfg.held_out_domain for it in items),
         f"val.root={v.root}: no {v.split!r} tumor items with a GT negative outside "
         f"held_out_domain={cfg.held_out_domain!r} (val.split)")


def check_pairs_present(cfg: DpoConfig) -> None:
    """``pairs`` holds a pairs manifest with pairs of ``pair_kinds`` (reads the JSONL only)."""
    rows = read_pairs(cfg.pairs)  # FileNotFoundError naming the folder when there is none
    if not any(r.kind in cfg.pair_kinds for r in rows):
        raise ConfigError(f"pairs={cfg.pairs}: no pairs of pair_kinds={list(cfg.pair_kinds)} "
                          f"(it has {sorted({r.kind for r in rows})})")


# -- scorers (generator.train_scorers) ---------------------------------------------------------
DEVICES = ("cpu", "cuda", "auto")  # or cuda:N


def check_scorer_config(cfg: ScorerTrainConfig) -> None:
    """One-line errors naming the field for values that would otherwise fail after the images
    have loaded or, for ``generator``, after two of the three scorers have trained (or never:
    zero steps saved untrained scorers over ``out_dir``); called before anything loads.
    ``held_out_domain`` is checked against the manifest's domains when ``root`` exists."""
    from generator.build import CONFIG_NAME

    check_out_dir("out_dir", cfg.out_dir)
    need(cfg.split in SPLITS, f"split={cfg.split!r}; expected {' | '.join(SPLITS)}")
    for key in ("steps", "num_threads"):
        need(getattr(cfg, key) >= 1, f"{key} must be >= 1, got {getattr(cfg, key)}")
    need(cfg.batch_size >= 2, f"batch_size must be >= 2 (half positives, half negatives), got "
         f"{cfg.batch_size}")
    for key in ("dilation_px", "n_biharmonic", "n_generator", "seed", "normal_regions"):
        need(getattr(cfg, key) >= 0, f"{key} must be >= 0, got {getattr(cfg, key)}")
    need(cfg.lr > 0 and np.isfinite(cfg.lr), f"lr must be > 0, got {cfg.lr}")
    need_unit("lesion_scale_min", cfg.lesion_scale_min)
    need_unit("lesion_scale_ramp", cfg.lesion_scale_ramp)
    dev = cfg.device
    need(dev in DEVICES or (dev.startswith("cuda:") and dev[5:].isdigit()),
         f"device={dev!r}; expected cpu | cuda | cuda:N | auto")
    if dev.startswith("cuda"):
        need(torch.cuda.is_available(), f"device={dev} but this machine has no CUDA device (use cpu "
             "or auto)")
        index = int(dev[5:]) if ":" in dev else 0
        need(index < torch.cuda.device_count(),
             f"device={dev} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    gen = cfg.generator
    if gen and gen != "pixel":
        path = Path(gen).expanduser()
        need(not missing_path(gen), f"generator={gen}: no such checkpoint folder (a hub id reads "
             "org/name)")
        if not path.exists():  # a hub id: loaded from the local cache only (generator.build)
            from generator.build import resolve_local

            try:
                resolve_local(gen)
            except Exception as err:  # noqa: BLE001 (huggingface_hub's lookup and validation errors)
                raise ConfigError(f"generator={gen}: no such checkpoint folder, nor a hub id in the "
                                  f"local cache ({type(err).__name__})") from None
        else:
            need(any((path / f).is_file() for f in (CONFIG_NAME, "model_index.json",
                                                    "generator_lora.json")),
                 f"generator={gen}: neither a pixel checkpoint ({CONFIG_NAME}) nor a diffusers "
                 "pipeline (model_index.json) or LoRA folder (generator_lora.json)")
    items = manifest_items(cfg.root)
    if items is None:
        return
    check_domain("held_out_domain", cfg.held_out_domain, cfg.root,
                 sorted({it.domain for it in items}), empty="holds nothing out")
    if not any(it.split == cfg.split and it.label == "tumor" and it.domain != cfg.held_out_domain
               for it in items):
        raise ConfigError(f"{cfg.root}: no tumor items in split={cfg.split!r} outside "
                          f"held_out_domain={cfg.held_out_domain!r}; the lesion scorers need some")
