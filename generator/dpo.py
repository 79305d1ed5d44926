"""DPO stage of the generator: Diffusion-DPO on reference-ranked pairs, with the guards of design §3.

``python -m generator.dpo --config configs/generator/dpo.yaml [key=value ...]`` (the lead wires
``generator/train.py --stage dpo`` to ``main``). The policy starts from the reference checkpoint;
the reference stays frozen. Each step: winner and loser of a pair share noise ε and timestep t;
per-sample errors of policy and reference → ``diffusion_dpo_loss`` (+ SDPO loser-gradient scale,
+ supervised winner anchor, + mask-aware MI, + no-copy). Every term and the raw winner/loser
errors are logged each step (``OUT/log.jsonl`` and TensorBoard); a held-out validation set is
sampled every ``optim.val_every`` steps; the best validation checkpoint is kept in ``OUT/best``
(the predictor's ``pixel`` layout) and marked ``beats_reference`` only if it beats the reference;
the last policy goes to ``OUT/final``. ``summary.json`` holds the winner/loser error drift (policy −
reference, mean of the last 10 steps).

Backends (``model.backend``, adapters in ``generator.backends``): ``pixel`` (``reference`` is a
pixel checkpoint; the policy is a copy) or ``sd-inpaint`` (``model.sd.pretrained`` is the base
pipeline, ``reference`` an optional diffusers LoRA dir on it, "" = the base itself; the policy is a
LoRA adapter on the same UNet, the reference that UNet with the adapter switched off; outputs are
diffusers LoRA dirs, loadable with ``pipe.load_lora_weights``). accelerate mixed precision,
gradient accumulation, optional 8-bit AdamW; ``optim.checkpoint_every`` > 0 writes
``save_state`` checkpoints (policy, optimiser, the pair/noise generator's state, step, best) and
``--resume latest`` continues one exactly where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from generator.backends import (
    BACKENDS,
    WEIGHT_DTYPES,
    PixelTrainBackend,
    diffusion_target,
    make_optimizer,
    resolve_checkpoint,
)
from generator.build import (
    DEFAULT_CHECKPOINT,
    checkpoint_coarse_prior,
    checkpoint_native_coarse,
    checkpoint_texture_match,
    checkpoint_window,
    load_pixel,
)
from generator.checks import check_dpo_config, check_pairs_present
from generator.dpo_config import (  # noqa: F401  (re-exported: generator.dpo.DpoConfig etc.)
    CurriculumConfig,
    DpoConfig,
    DpoModelConfig,
    DpoOptimConfig,
    LossConfig,
    ValConfig,
)
from generator.dpo_val import evaluate, load_val_items  # noqa: F401  (re-exported)
from generator.modeling import pixel_unet
from generator.pairs import read_pairs
from generator.predictor import NegativeGenerator
from generator.preference import (
    diffusion_dpo_loss,
    mask_mi_loss,
    mse_output_grad,
    no_copy_loss,
    per_sample_mse,
    predicted_sample,
    scale_grad,
    sdpo_lambda,
)
from generator.sd_backend import build_sd_backend, lora_hash
from shared.config import load_config, to_dict
from shared.io import read_image, read_mask, write_json_atomic
from shared.launch import check_joined, use_cpu


def load_pair_tensors(pairs_dir: str | Path, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """All pairs of ``kinds`` as tensors: image/hole/winner/loser (N,1,H,W), difficulty (N,)."""
    root = Path(pairs_dir)
    rows = read_pairs(root, kinds=kinds)
    if not rows:
        raise ValueError(f"{root}: no pairs of kinds {kinds}")

    def img(rel: str) -> torch.Tensor:
        x = read_image(root / rel)
        x = x if x.ndim == 2 else x.mean(axis=2)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]

    return {
        "image": torch.stack([img(r.image) for r in rows]),
        "hole": torch.stack([torch.from_numpy(read_mask(root / r.hole).astype(np.float32))[None]
                             for r in rows]),
        "winner": torch.stack([img(r.winner) for r in rows]),
        "loser": torch.stack([img(r.loser) for r in rows]),
        "difficulty": torch.tensor([r.difficulty for r in rows], dtype=torch.float32),
    }


def curriculum_pool(difficulty: torch.Tensor, step: int, cfg: CurriculumConfig) -> torch.Tensor:
    """Indices of the pairs available at ``step``: the easiest (largest gap) (s+1)/S of them."""
    n = difficulty.numel()
    if not cfg.enabled:
        return torch.arange(n)
    stage = min(step // max(1, cfg.steps_per_stage), cfg.stages - 1)
    keep = max(1, int(np.ceil(n * (stage + 1) / cfg.stages)))
    return torch.argsort(difficulty, descending=True, stable=True)[:keep]


def dpo_step_losses(
    policy, reference, scheduler, batch: dict[str, torch.Tensor], mcfg: pixel_unet.PixelUNetConfig,
    lcfg: LossConfig, generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """All loss terms and diagnostics of one pixel DPO step on a batch of pairs (B,1,H,W tensors)."""
    backend = PixelTrainBackend(policy, scheduler, mcfg, reference=reference)
    return preference_step_losses(backend, batch, lcfg, generator)


def preference_step_losses(
    backend, batch: dict[str, torch.Tensor], lcfg: LossConfig, generator: torch.Generator,
    *, step: int = 0,
) -> dict[str, torch.Tensor]:
    """All loss terms and diagnostics of one DPO step, for any backend (``generator.backends``).

    Winner and loser of a pair get the *same* ε (drawn once, shape of the clean sample) and the
    same t (B,); both are noised, the policy and the frozen reference predict the scheduler's
    target for the 2B inputs (winners then losers, one forward each; the reference first: see
    ``SDInpaintTrainBackend.predict_reference``). Errors are ``per_sample_mse`` over the hole
    (``region: hole``; in latent space the latent cells the hole touches) or everything; then
    ``diffusion_dpo_loss`` (+ SDPO scale, + β-free winner anchor ``sft_weight·e_w``, + MI and
    no-copy terms on the winner's one-step x̂0 as an image, ``backend.image_estimate``).
    ``step``: the optimiser step, for the DPO → SDPO schedule (``lcfg.sdpo_from_step``).
    """
    r_w, r_l, cond, region = backend.pair_batch(batch)
    b, device = r_w.shape[0], r_w.device
    noise = torch.randn(r_w.shape, generator=generator).to(device)  # shared by winner and loser
    t_cpu = torch.randint(0, backend.scheduler.config.num_train_timesteps, (b,), generator=generator)
    t = t_cpu.to(device)
    sched = backend.scheduler
    x_w, x_l = sched.add_noise(r_w, noise, t), sched.add_noise(r_l, noise, t)
    y_w = diffusion_target(sched, r_w, noise, t, backend.prediction_type)
    y_l = diffusion_target(sched, r_l, noise, t, backend.prediction_type)
    x_in, c_in, t_in = torch.cat([x_w, x_l]), torch.cat([cond, cond]), torch.cat([t, t])
    q_w, q_l = backend.predict_reference(x_in, c_in, t_in).chunk(2)
    p_w, p_l = backend.predict(x_in, c_in, t_in).chunk(2)
    weight = region if lcfg.region == "hole" else None
    e_w, e_l = per_sample_mse(p_w, y_w, weight), per_sample_mse(p_l, y_l, weight)
    re_w, re_l = per_sample_mse(q_w, y_w, weight), per_sample_mse(q_l, y_l, weight)
    lam = torch.ones(b, device=device)
    if lcfg.sdpo and step >= lcfg.sdpo_from_step:
        lam = sdpo_lambda(mse_output_grad(p_w, y_w, weight), mse_output_grad(p_l, y_l, weight),
                          mu=lcfg.mu)
    out = diffusion_dpo_loss(e_w, scale_grad(e_l, lam), re_w, re_l, beta=lcfg.beta)
    total = out["dpo_loss"] + lcfg.sft_weight * e_w.mean()
    if lcfg.mi_weight > 0 or lcfg.copy_weight > 0:
        x0_hat = predicted_sample(p_w.float(), x_w, sched.alphas_cumprod[t_cpu],
                                  prediction_type=backend.prediction_type)
        x0_img, image, hole, smooth = backend.image_estimate(x0_hat, cond, batch)
        out.update(mask_mi_loss(x0_img, image, hole))
        out.update(no_copy_loss(x0_img, image, smooth, hole))
        total = total + lcfg.mi_weight * out["mi_loss"] + lcfg.copy_weight * out["copy_loss"]
    out.update({"loss": total, "model_w_err": e_w.detach().mean(), "model_l_err": e_l.detach().mean(),
                "ref_w_err": re_w.mean(), "ref_l_err": re_l.mean(), "sdpo_lambda": lam.mean()})
    return out


class GeneratorState:
    """A ``torch.Generator`` as an accelerate checkpointable object (state_dict/load_state_dict),
    so a resumed run draws the same pairs, noise and timesteps as an uninterrupted one."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        """The generator's RNG state (a uint8 tensor)."""
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the RNG state saved by ``state_dict``."""
        self.generator.set_state(state["state"])


def build_dpo_backend(cfg: DpoConfig, accelerator: Accelerator):
    """(training backend, reference hash) for ``cfg.model.backend``."""
    from generator.build import DEFAULT_CHECKPOINT

    if cfg.model.backend not in BACKENDS:
        raise ValueError(f"model.backend must be one of {BACKENDS}, got {cfg.model.backend!r}")
    if cfg.model.backend == "sd-inpaint":
        if cfg.model.sd.init_lora:
            raise ValueError("DPO starts from `reference` (a LoRA dir); leave model.sd.init_lora empty")
        backend = build_sd_backend(cfg.model, device=accelerator.device, need_reference=True,
                                   weight_dtype=WEIGHT_DTYPES[cfg.optim.mixed_precision],
                                   reference_lora=cfg.reference)
        return backend, lora_hash(backend.base_hash, cfg.reference)
    ref_path = Path(cfg.reference) if cfg.reference else DEFAULT_CHECKPOINT
    pixel, ref_hash = load_pixel(ref_path)
    reference = pixel.unet.eval().requires_grad_(False)
    policy = copy.deepcopy(reference).train().requires_grad_(True)
    train_sched = pixel_unet.build_scheduler(pixel.cfg, kind="ddpm")
    backend = PixelTrainBackend(policy, train_sched, pixel.cfg, reference=reference,
                                sampler=pixel.scheduler)
    return backend, ref_hash


def train_dpo(cfg: DpoConfig, *, scorers=None, resume: str | None = None,
              stop_after: int | None = None) -> dict:
    """Run the DPO stage; returns the summary (also written to ``OUT/summary.json``).

    ``resume``: ``"latest"`` or a checkpoint dir of ``optim.checkpoint_every``; ``stop_after``:
    end the loop after this step without exporting (what a kill does; tests use it).
    """
    from generator.scoring import load_scorers

    torch.set_num_threads(cfg.optim.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=cfg.optim.mixed_precision, log_with="tensorboard",
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out), automatic_checkpoint_naming=True,
                                            total_limit=2),
        cpu=use_cpu(),
    )
    check_joined(accelerator.num_processes)
    accelerator.init_trackers("dpo")
    backend, ref_hash = build_dpo_backend(cfg, accelerator)
    scorers = scorers if scorers is not None else load_scorers()
    data = load_pair_tensors(cfg.pairs, tuple(cfg.pair_kinds))
    val_items = load_val_items(cfg.val, cfg.held_out_domain)
    params = backend.trainable_parameters()
    opt = make_optimizer(params, lr=cfg.optim.lr, use_8bit=cfg.optim.use_8bit_adam)
    backend.model, opt = accelerator.prepare(backend.model, opt)
    backend.register_checkpoint_hooks(accelerator)
    gen = torch.Generator().manual_seed(cfg.optim.seed)
    accelerator.register_for_checkpointing(GeneratorState(gen))
    (out / "dpo_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    unwrap = accelerator.unwrap_model

    def validate(step: int) -> dict[str, float]:
        backend.model.eval()
        g = NegativeGenerator(backend.inference_backend(unwrap), checkpoint_hash="dpo")
        with accelerator.autocast():  # a bf16 base UNet/VAE needs autocast outside the loss too
            m = evaluate(g, scorers, val_items, steps=cfg.val.steps, seed=cfg.val.seed)
        backend.model.train()
        log.write(json.dumps({"step": step, **{f"val/{k}": v for k, v in m.items()}}) + "\n")
        accelerator.log({f"val/{k}": v for k, v in m.items()}, step=step)
        return m

    # the policy is run as its reference was (lesion window for a window-trained reference)
    pixel_ref = cfg.reference or DEFAULT_CHECKPOINT
    window = checkpoint_window(pixel_ref) if cfg.model.backend == "pixel" else "whole"
    native = cfg.model.backend == "pixel" and checkpoint_native_coarse(pixel_ref)
    texture = cfg.model.backend == "pixel" and checkpoint_texture_match(pixel_ref)
    prior = checkpoint_coarse_prior(pixel_ref) if cfg.model.backend == "pixel" else "biharmonic"

    def extra(step: int, **more) -> dict:
        return {"dpo": to_dict(cfg), "reference": ref_hash, "step": step,
                "inference": {"window": window, "native_coarse": native, "texture_match": texture,
                              "coarse_prior": prior},
                **more}

    first = 1
    if resume:
        ckpt, state = resolve_checkpoint(out, resume, "dpo_state.json")
        accelerator.load_state(str(ckpt))
        first, ref_val, best = state["step"] + 1, state["reference_val"], state["best"]
        accelerator.project_configuration.iteration = int(ckpt.name.split("_")[-1]) + 1
        _truncate_log(out / "log.jsonl", state["step"])
        log = (out / "log.jsonl").open("a")
    else:
        log = (out / "log.jsonl").open("w")
        ref_val = validate(0)
        best = {"step": 0, "val": ref_val}
    t0 = time.time()
    step = first - 1
    for step in range(first, cfg.optim.steps + 1):
        pool = curriculum_pool(data["difficulty"], step - 1, cfg.curriculum)
        acc_parts: list[dict[str, float]] = []
        for _ in range(cfg.optim.gradient_accumulation_steps):
            idx = pool[torch.randint(0, pool.numel(), (cfg.optim.batch_size,), generator=gen)]
            batch = {k: v[idx] for k, v in data.items() if k != "difficulty"}
            with accelerator.accumulate(backend.model):
                with accelerator.autocast():
                    parts = preference_step_losses(backend, batch, cfg.loss, gen, step=step)
                accelerator.backward(parts["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.optim.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            acc_parts.append({k: float(v.detach()) for k, v in parts.items()})
        scalars = {k: float(np.mean([a[k] for a in acc_parts])) for k in acc_parts[0]}
        scalars["pool"] = int(pool.numel())
        log.write(json.dumps({"step": step, **scalars}) + "\n")
        accelerator.log(scalars, step=step)
        if step % cfg.optim.log_every == 0:
            print(f"step {step} " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()), flush=True)
        if step % cfg.optim.val_every == 0 or step == cfg.optim.steps:
            m = validate(step)
            ok = m["psnr"] >= ref_val["psnr"] - cfg.val.psnr_tolerance_db
            if ok and m["ranking_score"] > best["val"]["ranking_score"]:
                best = {"step": step, "val": m}
                if accelerator.is_main_process:
                    shutil.rmtree(out / "best", ignore_errors=True)
                    backend.save(out / "best", extra(step, val=m), unwrap=unwrap)
        if cfg.optim.checkpoint_every > 0 and step % cfg.optim.checkpoint_every == 0:
            log.flush()
            accelerator.wait_for_everyone()
            path = Path(accelerator.save_state())
            if accelerator.is_main_process:
                write_json_atomic(path / "dpo_state.json",  # last: marks it complete
                                  {"step": step, "reference_val": ref_val, "best": best})
        if stop_after is not None and step >= stop_after:
            log.close()
            accelerator.end_training()
            return {"stopped_at": step}
    log.close()
    if accelerator.is_main_process:
        backend.save(out / "final", extra(step), unwrap=unwrap)
    tail = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    tail = [r for r in tail if "model_w_err" in r][-10:]
    summary = {"reference_val": ref_val, "best_step": best["step"], "best_val": best["val"],
               "winner_err_drift": float(np.mean([r["model_w_err"] - r["ref_w_err"] for r in tail])),
               "loser_err_drift": float(np.mean([r["model_l_err"] - r["ref_l_err"] for r in tail])),
               "beats_reference": best["step"] > 0, "train_seconds": round(time.time() - t0, 1),
               "best_checkpoint": str(out / "best") if best["step"] > 0 else None,
               "rule": "best = highest val ranking score with PSNR >= reference - tolerance"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return summary


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (written after the checkpoint, before the stop)."""
    if not path.is_file():
        return
    keep = [x for x in path.read_text().splitlines() if json.loads(x)["step"] <= step]
    path.write_text("".join(x + "\n" for x in keep))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generator DPO stage")
    p.add_argument("--config", type=Path, default=None, help="YAML file for DpoConfig")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return p.parse_args(argv)


def main(args: argparse.Namespace | list[str] | None = None) -> dict:
    """Entry point: ``args`` from ``parse_args`` (or an argv list); ``generator/train.py --stage
    dpo`` can call ``main(parse_args(["--config", path, *overrides]))``."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    cfg = load_config(DpoConfig, args.config, list(args.overrides or []))
    check_dpo_config(cfg)  # mistakes end here, before the reference or any data loads
    check_pairs_present(cfg)
    resume = getattr(args, "resume", None)
    if resume:  # a missing or incomplete checkpoint is named now, not after the model loads
        resolve_checkpoint(Path(cfg.output_dir), resume, "dpo_state.json")
    summary = train_dpo(cfg, resume=resume)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from shared.cli import run

    run(lambda: main(sys.argv[1:]))
