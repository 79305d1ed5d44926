"""Train the generator: ``accelerate launch generator/train.py --config FILE --stage reference``.

Stages (a registry; ``--stage dpo`` dispatches to ``generator.dpo.main`` with its own config):
- ``reference``: the model learns to fill holes with healthy tissue (``generator.data``),
  region-weighted diffusion loss (``generator.losses.reference_loss``). One loop, two backends
  (``model.backend``, adapters in ``generator.backends``): ``pixel`` (the embedded UNet2DModel,
  EMA weights exported with ``save_pretrained``) and ``sd-inpaint`` (the 9-channel SD inpainting
  UNet in latent space, LoRA via peft or full fine-tuning, exported as a diffusers LoRA dir or a
  pipeline). accelerate mixed precision (``optim.mixed_precision``), gradient accumulation,
  gradient checkpointing (``model.sd.gradient_checkpointing``), optional 8-bit AdamW
  (``optim.use_8bit_adam``, needs bitsandbytes), TensorBoard; ``save_state`` checkpoints every
  ``optim.checkpoint_every`` steps (0: at the last step only); ``--resume latest`` continues from
  the newest one.

Config mistakes (``check_train_config``) end in one ``ConfigError`` line naming the field before
any data or model loads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch generator/train.py` runs this as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel

from generator.backends import (
    BACKENDS,
    WEIGHT_DTYPES,
    GeneratorModelConfig,
    PixelTrainBackend,
    crop_around_holes,  # noqa: F401 (re-exported: it lived here)
    make_optimizer,
    pixel_config,
    reference_step_loss,
    resolve_checkpoint,
)
from generator.checks import check_train_config
from generator.data import (
    DataConfig,
    ReferenceDataset,
    RegionWeights,
    aux_records,
    load_records,
)
from generator.modeling import pixel_unet
from generator.sd_backend import build_sd_backend
from shared.config import load_config, to_dict
from shared.io import write_json_atomic
from shared.launch import check_joined, use_cpu
from shared.progress import progress


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 6000  # optimiser steps in total
    batch_size: int = 16  # per process
    lr: float = 3e-4  # AdamW peak learning rate
    warmup_steps: int = 200  # linear warm-up, then the schedule below
    lr_schedule: str = "cosine"  # "cosine" (decay to 10% of lr at `steps`) | "constant"
    max_minutes: float = 0.0  # wall-clock budget; stop and export when reached (0 = no limit)
    weight_decay: float = 0.0  # AdamW; diffusion UNets usually train without it
    grad_clip: float = 1.0  # max global grad norm
    ema_decay: float = 0.999  # EMA of the trained weights; the exported model is the EMA (0 = off)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (bf16 autocast was 14× slower on this CPU)
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step (accelerate accumulate)
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (GPU; an error if bitsandbytes is absent)
    seed: int = 0  # seeds init, data draws and noise
    num_threads: int = 1  # torch intra-op threads per process (the CPUs are shared)
    crop: int = 0  # train on crop² windows around the hole (0 = full image); needs a conv-only UNet
    num_workers: int = 0  # DataLoader worker processes (0 = in the training process; GPU: 4)
    checkpoint_every: int = 1000  # accelerate save_state period (steps; 0 = only the last step's)
    log_every: int = 50  # TensorBoard scalar period (steps)


@dataclass(frozen=True)
class InferenceConfig:
    """How the exported pixel checkpoint is to be run (its ``inference`` section, read by
    ``generator.build.load_generator``); the window rule follows ``data.window_p``."""

    # compose each fill from the classical prior's low frequencies + the learned residual's
    # ring-matched high-pass (NegativeGenerator.texture_match)
    texture_match: bool = False
    coarse_prior: str = "biharmonic"  # the classical fill it composes on: biharmonic | kriging | stacked


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/generator/reference"  # checkpoints, logs, final/ export
    # backend ("pixel" | "sd-inpaint"), the pixel UNet's fields and the sd-inpaint section
    model: GeneratorModelConfig = field(default_factory=GeneratorModelConfig)
    data: DataConfig = field(default_factory=DataConfig)  # benchmark root, held-out domain
    weights: RegionWeights = field(default_factory=RegionWeights)  # hole/context/tumor loss weights
    optim: OptimConfig = field(default_factory=OptimConfig)
    # a pixel checkpoint directory to start from instead of random weights (fine-tuning); its
    # model config must equal ``model`` except the see-through fields: a 4-channel checkpoint is
    # widened with zero weights for the see-through channel (pixel_unet.widen_from)
    init_from: str = ""
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=None, help="YAML file for TrainConfig")
    p.add_argument("--stage", choices=sorted([*STAGES, "dpo"]), default="reference")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config")
    return p.parse_args(argv)


def lr_lambda(cfg: OptimConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def training_loss(
    unet, scheduler, batch: dict, cfg: pixel_unet.PixelUNetConfig, *, crop: int = 0
) -> torch.Tensor:
    """One pixel reference-model loss on a batch: noise the residual, predict the scheduler's
    target (``generator.backends.reference_step_loss`` with the pixel backend)."""
    return reference_step_loss(PixelTrainBackend(unet, scheduler, cfg, crop=crop), batch)


def build_backend(cfg: TrainConfig, accelerator: Accelerator):
    """The training backend of ``cfg.model.backend`` (``generator.backends``)."""
    if cfg.model.backend not in BACKENDS:
        raise ValueError(f"model.backend must be one of {BACKENDS}, got {cfg.model.backend!r}")
    if cfg.model.backend == "sd-inpaint":
        if cfg.init_from:
            raise ValueError("init_from is for pixel checkpoints; use model.sd.init_lora")
        return build_sd_backend(cfg.model, device=accelerator.device,
                                weight_dtype=WEIGHT_DTYPES[cfg.optim.mixed_precision])
    mcfg = pixel_config(cfg.model)
    unet = pixel_unet.build_unet(mcfg)
    if cfg.init_from:
        unet = _init_from(unet, Path(cfg.init_from), mcfg)
    scheduler = pixel_unet.build_scheduler(mcfg, kind="ddpm")
    return PixelTrainBackend(unet, scheduler, mcfg, crop=cfg.optim.crop)


def run_reference(cfg: TrainConfig, args: argparse.Namespace) -> None:
    torch.set_num_threads(cfg.optim.num_threads)
    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(
            project_dir=str(out), logging_dir=str(out / "logs"), automatic_checkpoint_naming=True,
            total_limit=2,
        ),
        cpu=use_cpu(),
    )
    check_joined(accelerator.num_processes)
    set_seed(cfg.optim.seed)
    data = cfg.data
    domains = data.train_domains or _all_domains_but(data.root, data.held_out_domain)
    if data.held_out_domain in domains:
        raise ValueError(f"held-out domain {data.held_out_domain!r} is also a training domain")
    records = load_records(data.root, domains=domains, split=data.split,
                           gt_negatives_as_normals=data.gt_negatives_as_normals)
    records += aux_records(data, records[0].image.shape[0], seed=cfg.optim.seed)
    seed = cfg.optim.seed + accelerator.process_index
    dataset = ReferenceDataset(records, data, cfg.weights, seed=seed)
    if data.window_p > 0:  # multi-scale windows of real anatomy + the benchmark through the window rule
        from generator.windows import BenchmarkWindows, Mixed, WindowDataset

        native = WindowDataset(data.windows, hole_weight=cfg.weights.hole,
                               context_weight=cfg.weights.context, seed=seed)
        dataset = Mixed(native, BenchmarkWindows(dataset, data.windows, seed=seed), data.window_p,
                        seed=seed)
    workers = cfg.optim.num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, worker_init_fn=_reseed_worker,
    )
    backend = build_backend(cfg, accelerator)
    params = backend.trainable_parameters()
    ema = EMAModel(params, decay=cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    opt = make_optimizer(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                         use_8bit=cfg.optim.use_8bit_adam)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim))
    backend.model, opt, loader, sched = accelerator.prepare(backend.model, opt, loader, sched)
    backend.register_checkpoint_hooks(accelerator)
    if ema is not None:
        ema.to(accelerator.device)  # the shadow weights live beside the model (GPU runs)
        accelerator.register_for_checkpointing(ema)
    step = 0
    if args.resume:
        ckpt, state = resolve_checkpoint(out, args.resume, "step.json")
        accelerator.load_state(str(ckpt))
        step = state["step"]
        accelerator.project_configuration.iteration = int(ckpt.name.split("_")[-1]) + 1
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    accelerator.init_trackers("reference", config=_flat(to_dict(cfg)))
    bar = progress(total=cfg.optim.steps, initial=step, desc="train", every=cfg.optim.log_every,
                   disable=not accelerator.is_local_main_process)
    t0, running, out_of_time = time.time(), 0.0, False
    while step < cfg.optim.steps:
        for batch in loader:
            with accelerator.accumulate(backend.model):
                with accelerator.autocast():
                    loss = reference_step_loss(backend, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.optim.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:  # a micro-batch of an accumulation window
                continue
            if ema is not None:
                ema.step(params)
            step += 1
            running += loss.item()
            bar.update(1)
            if step % cfg.optim.log_every == 0:
                accelerator.log({"loss": running / cfg.optim.log_every, "lr": sched.get_last_lr()[0],
                                 "sec_per_step": (time.time() - t0) / step}, step=step)
                bar.set_postfix(loss=f"{running / cfg.optim.log_every:.4f}")
                running = 0.0
            every = cfg.optim.checkpoint_every
            if (every > 0 and step % every == 0) or step == cfg.optim.steps:
                _checkpoint(accelerator, step)
            out_of_time = cfg.optim.max_minutes > 0 and time.time() - t0 > 60 * cfg.optim.max_minutes
            if out_of_time:
                _checkpoint(accelerator, step)
            if step >= cfg.optim.steps or out_of_time:
                break
        if out_of_time:
            break
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        extra = {"train": to_dict(cfg), "train_seconds": round(time.time() - t0, 1),
                 "steps": step, "command": " ".join(sys.argv),
                 # window-trained: run on lesion windows, residual on a native biharmonic fill
                 "inference": {"window": "lesion" if cfg.data.window_p > 0 else "whole",
                               "native_coarse": cfg.data.window_p > 0,
                               "texture_match": cfg.inference.texture_match,
                               "coarse_prior": cfg.inference.coarse_prior}}
        backend.save(out / "final", extra, unwrap=accelerator.unwrap_model)
    accelerator.end_training()


STAGES: dict[str, Callable[[TrainConfig, argparse.Namespace], None]] = {"reference": run_reference}


def _init_from(unet, path: Path, model: pixel_unet.PixelUNetConfig):
    """``unet`` with the weights of the pixel checkpoint at ``path`` (widened if need be)."""
    from dataclasses import replace

    from diffusers import UNet2DModel

    from generator.build import read_pixel_config

    src_cfg = read_pixel_config(path)
    see = dict(see_through=model.see_through, see_through_sigma=model.see_through_sigma)
    if replace(src_cfg, **see) != model:
        raise ValueError(f"init_from {path}: its model config {src_cfg} differs from the run's "
                         f"{model} in more than the see-through fields")
    source = UNet2DModel.from_pretrained(path / "unet", dtype=torch.float32)
    return pixel_unet.widen_from(unet, source)


def _reseed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own hole/augmentation stream: a forked worker would
    otherwise repeat the parent's numpy generator draw for draw. torch seeds every worker
    differently (base seed + id), and the base seed follows ``set_seed``."""
    info = torch.utils.data.get_worker_info()
    datasets, seq = [info.dataset], np.random.SeedSequence(torch.initial_seed() % 2**63)
    while datasets:  # nested datasets (generator.windows.Mixed, BenchmarkWindows) each get a stream
        ds = datasets.pop()
        ds.rng = np.random.default_rng(seq.spawn(1)[0])
        datasets += [getattr(ds, a) for a in ("first", "second", "base") if hasattr(ds, a)]


def _checkpoint(accelerator: Accelerator, step: int) -> None:
    accelerator.wait_for_everyone()
    path = Path(accelerator.save_state())
    if accelerator.is_main_process:
        write_json_atomic(path / "step.json", {"step": step})  # last: marks it complete


def _all_domains_but(root: str, held_out: str) -> tuple[str, ...]:
    from shared.benchmark import load_manifest

    return tuple(sorted({it.domain for it in load_manifest(root)} - {held_out}))


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.stage == "dpo":  # its own config type (generator.dpo.DpoConfig) and loop
        from generator.dpo import main as dpo_main

        return dpo_main(
            (["--config", str(args.config)] if args.config else [])
            + (["--resume", str(args.resume)] if args.resume else []) + list(args.overrides)
        )
    cfg = load_config(TrainConfig, args.config, args.overrides)
    check_train_config(cfg)  # mistakes end here, before any data or model loads
    if args.resume:  # a missing or incomplete checkpoint is named now, not after the data loads
        resolve_checkpoint(Path(cfg.output_dir), args.resume, "step.json")
    STAGES[args.stage](cfg, args)
    return None


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True)  # design §7: avoids the occasional gloo teardown abort
