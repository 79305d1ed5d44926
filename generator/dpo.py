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
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from generator.build import PixelBackend, load_pixel, save_pixel_checkpoint
from generator.masks import dilate
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
from generator.scoring import ranking_score, score_negatives
from shared.config import load_config, to_dict
from shared.io import read_image, read_mask
from shared.launch import check_joined, use_cpu


@dataclass(frozen=True)
class LossConfig:
    beta: float = 2500.0  # DPO temperature β (paper 5000 with the ½; larger = sharper preference)
    region: str = "hole"  # errors averaged over "hole" pixels only or "all" (C,H,W as in the paper)
    sdpo: bool = False  # Diffusion-SDPO: scale the loser's gradient so the winner's error can't rise
    mu: float = 0.9  # SDPO μ: share of ‖g_w‖² the winner keeps after the loser's push
    sft_weight: float = 0.0  # supervised anchor: weight of the policy's winner error
    mi_weight: float = 0.0  # λ_MI of −Î(x̂0⊙(1−m), x⊙(1−m)) on the winner's one-step x̂0
    copy_weight: float = 0.0  # weight of the no-copy term (lesion correlation inside the hole)


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False  # easy (large score gap) pairs first, harder ones added in stages
    stages: int = 3  # stage s of S trains on the easiest (s+1)/S of the pairs
    steps_per_stage: int = 40  # the stage advances every this many steps


@dataclass(frozen=True)
class DpoOptimConfig:
    steps: int = 120  # optimiser steps
    batch_size: int = 8  # pairs per step (the UNet sees 2× that: winners and losers)
    lr: float = 1e-5  # AdamW learning rate (constant; DPO moves little from the reference)
    grad_clip: float = 1.0  # max global grad norm
    seed: int = 0  # pair order, noise, timesteps
    num_threads: int = 1  # torch intra-op threads (the CPUs are shared)
    val_every: int = 40  # validation period (steps); step 0 (= the reference) is always validated
    log_every: int = 10  # console print period (the JSONL log gets every step)


@dataclass(frozen=True)
class ValConfig:
    root: str = "data/bench64"  # benchmark root for validation items
    split: str = "val"  # split of the training domains (never the held-out domain)
    max_items: int = 16  # tumor items with a GT negative, the first N
    steps: int = 10  # DDIM steps per validation sample
    seed: int = 12345  # sampling seed, the same at every validation
    psnr_tolerance_db: float = 0.5  # a checkpoint may lose at most this inside-mask PSNR vs the reference


@dataclass(frozen=True)
class DpoConfig:
    output_dir: str = "runs/generator/dpo"  # log.jsonl, best/ (pixel checkpoint), summary.json
    reference: str = ""  # reference checkpoint dir; "" = the embedded default
    pairs: str = "runs/generator/dpo_pairs"  # directory written by generator.pairs
    pair_kinds: tuple[str, ...] = ("sample",)  # which pair kinds train: sample | gt | positive
    held_out_domain: str = "retina"  # excluded from validation too
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: DpoOptimConfig = field(default_factory=DpoOptimConfig)
    val: ValConfig = field(default_factory=ValConfig)


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
    """All loss terms and diagnostics of one DPO step on a batch of pairs (B,1,H,W tensors)."""
    cond = pixel_unet.condition(batch["image"], batch["hole"], mcfg)
    r_w = pixel_unet.residual_target(batch["winner"], cond, mcfg)
    r_l = pixel_unet.residual_target(batch["loser"], cond, mcfg)
    b = r_w.shape[0]
    noise = torch.randn(r_w.shape, generator=generator)  # shared by winner and loser
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    x_w, x_l = scheduler.add_noise(r_w, noise, t), scheduler.add_noise(r_l, noise, t)
    if mcfg.prediction_type == "epsilon":
        y_w = y_l = noise
    elif mcfg.prediction_type == "v_prediction":
        y_w, y_l = scheduler.get_velocity(r_w, noise, t), scheduler.get_velocity(r_l, noise, t)
    else:
        y_w, y_l = r_w, r_l
    inp = torch.cat([pixel_unet.model_input(x_w, cond), pixel_unet.model_input(x_l, cond)])
    tt = torch.cat([t, t])  # (B,) -> (2B,): winners then losers
    p_w, p_l = policy(inp, tt).sample.chunk(2)
    with torch.no_grad():
        q_w, q_l = reference(inp, tt).sample.chunk(2)
    weight = batch["hole"] if lcfg.region == "hole" else None
    e_w, e_l = per_sample_mse(p_w, y_w, weight), per_sample_mse(p_l, y_l, weight)
    re_w, re_l = per_sample_mse(q_w, y_w, weight), per_sample_mse(q_l, y_l, weight)
    lam = torch.ones(b)
    if lcfg.sdpo:
        lam = sdpo_lambda(mse_output_grad(p_w, y_w, weight), mse_output_grad(p_l, y_l, weight),
                          mu=lcfg.mu)
    out = diffusion_dpo_loss(e_w, scale_grad(e_l, lam), re_w, re_l, beta=lcfg.beta)
    total = out["dpo_loss"] + lcfg.sft_weight * e_w.mean()
    if lcfg.mi_weight > 0 or lcfg.copy_weight > 0:
        r0_hat = predicted_sample(p_w.float(), x_w, scheduler.alphas_cumprod[t],
                                  prediction_type=mcfg.prediction_type)
        coarse = cond[:, 2:3]
        x0_hat = coarse + r0_hat / mcfg.residual_scale  # before paste-back: the model's own image
        out.update(mask_mi_loss(x0_hat, batch["image"], batch["hole"]))
        out.update(no_copy_loss(x0_hat, batch["image"], coarse, batch["hole"]))
        total = total + lcfg.mi_weight * out["mi_loss"] + lcfg.copy_weight * out["copy_loss"]
    out.update({"loss": total, "model_w_err": e_w.detach().mean(), "model_l_err": e_l.detach().mean(),
                "ref_w_err": re_w.mean(), "ref_l_err": re_l.mean(), "sdpo_lambda": lam.mean()})
    return out


def load_val_items(cfg: ValConfig, held_out: str, dilation_px: int = 2) -> list[dict]:
    """Validation positives with GT negatives from the training domains (never the held-out one)."""
    from shared.benchmark import load_manifest

    items = []
    for it in load_manifest(cfg.root):
        if it.split != cfg.split or it.label != "tumor" or it.domain == held_out:
            continue
        if it.gt_negative is None:
            continue
        gray = lambda x: (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)  # noqa: E731
        mask = read_mask(it.mask)
        items.append({"image": gray(read_image(it.image)), "mask": mask,
                      "gt": gray(read_image(it.gt_negative)), "region": dilate(mask, dilation_px)})
        if len(items) >= cfg.max_items:
            break
    if not items:
        raise ValueError(f"{cfg.root}: no {cfg.split} tumor items with GT outside {held_out!r}")
    return items


def evaluate(generator: NegativeGenerator, scorers, items: list[dict], *, steps: int,
             seed: int) -> dict[str, float]:
    """Mean inside-mask PSNR/SSIM vs GT, texture ratio, flip rates, ranking score, outside diff."""
    res = generator.generate([it["image"] for it in items], [it["mask"] for it in items],
                             num_samples=1, seed=seed, steps=steps)
    negs = [r[0].image for r in res]
    scores = score_negatives(scorers, negs, [it["image"] for it in items],
                             [it["region"] for it in items], [it["gt"] for it in items])

    def mean(key: str) -> float:
        vals = [s[key] for s in scores if key in s and np.isfinite(s[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "psnr": mean("psnr"), "ssim": mean("ssim"), "texture_ratio_gt": mean("texture_ratio_gt"),
        "flip_lesion": float(np.mean([s["lesion_prob"] < 0.5 for s in scores])),
        "flip_audit": float(np.mean([s["audit_prob"] < 0.5 for s in scores])),
        "fill_prob": mean("fill_prob"),
        "ranking_score": float(np.mean([ranking_score(s) for s in scores])),
        "outside_max_abs_diff": float(max(s["outside_max_abs_diff"] for s in scores)),
    }


def train_dpo(cfg: DpoConfig, *, scorers=None) -> dict:
    """Run the DPO stage; returns the summary (also written to ``OUT/summary.json``)."""
    from generator.build import DEFAULT_CHECKPOINT
    from generator.scoring import load_scorers

    torch.set_num_threads(cfg.optim.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision="no", log_with="tensorboard",
                              project_dir=str(out), cpu=use_cpu())
    check_joined(accelerator.num_processes)
    accelerator.init_trackers("dpo")
    ref_path = Path(cfg.reference) if cfg.reference else DEFAULT_CHECKPOINT
    backend, ref_hash = load_pixel(ref_path)
    mcfg = backend.cfg
    reference = backend.unet.eval().requires_grad_(False)
    policy = copy.deepcopy(reference).train().requires_grad_(True)
    train_sched = pixel_unet.build_scheduler(mcfg, kind="ddpm")
    scorers = scorers if scorers is not None else load_scorers()
    data = load_pair_tensors(cfg.pairs, tuple(cfg.pair_kinds))
    val_items = load_val_items(cfg.val, cfg.held_out_domain)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, weight_decay=0.0)
    policy, opt = accelerator.prepare(policy, opt)
    gen = torch.Generator().manual_seed(cfg.optim.seed)
    (out / "dpo_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    log = (out / "log.jsonl").open("w")

    def validate(step: int) -> dict[str, float]:
        policy.eval()
        g = NegativeGenerator(PixelBackend(accelerator.unwrap_model(policy), backend.scheduler, mcfg),
                              checkpoint_hash="dpo")
        m = evaluate(g, scorers, val_items, steps=cfg.val.steps, seed=cfg.val.seed)
        policy.train()
        log.write(json.dumps({"step": step, **{f"val/{k}": v for k, v in m.items()}}) + "\n")
        accelerator.log({f"val/{k}": v for k, v in m.items()}, step=step)
        return m

    ref_val = validate(0)
    best = {"step": 0, "val": ref_val}
    t0 = time.time()
    for step in range(1, cfg.optim.steps + 1):
        pool = curriculum_pool(data["difficulty"], step - 1, cfg.curriculum)
        idx = pool[torch.randint(0, pool.numel(), (cfg.optim.batch_size,), generator=gen)]
        batch = {k: v[idx] for k, v in data.items() if k != "difficulty"}
        parts = dpo_step_losses(policy, reference, train_sched, batch, mcfg, cfg.loss, gen)
        accelerator.backward(parts["loss"])
        accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        scalars = {k: float(v.detach()) for k, v in parts.items()}
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
                save_pixel_checkpoint(out / "best", accelerator.unwrap_model(policy), mcfg,
                                      extra={"dpo": to_dict(cfg), "reference": ref_hash,
                                             "step": step, "val": m})
    log.close()
    save_pixel_checkpoint(out / "final", accelerator.unwrap_model(policy), mcfg,
                          extra={"dpo": to_dict(cfg), "reference": ref_hash, "step": step})
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generator DPO stage")
    p.add_argument("--config", type=Path, default=None, help="YAML file for DpoConfig")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return p.parse_args(argv)


def main(args: argparse.Namespace | list[str] | None = None) -> dict:
    """Entry point: ``args`` from ``parse_args`` (or an argv list); ``generator/train.py --stage
    dpo`` can call ``main(parse_args(["--config", path, *overrides]))``."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    cfg = load_config(DpoConfig, args.config, list(args.overrides or []))
    summary = train_dpo(cfg)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from shared.cli import run

    run(lambda: main(sys.argv[1:]))
