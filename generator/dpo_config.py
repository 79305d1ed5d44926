"""Configuration of the generator's DPO stage (``generator.dpo``): one frozen dataclass per YAML
section of ``configs/generator/dpo.yaml``, one comment per field."""

from __future__ import annotations

from dataclasses import dataclass, field

from generator.sd_backend import SDModelConfig


@dataclass(frozen=True)
class LossConfig:
    beta: float = 2500.0  # DPO temperature β (paper 5000 with the ½; larger = sharper preference)
    region: str = "hole"  # errors averaged over "hole" pixels only or "all" (C,H,W as in the paper)
    sdpo: bool = False  # Diffusion-SDPO: scale the loser's gradient so the winner's error can't rise
    mu: float = 0.9  # SDPO μ: share of ‖g_w‖² the winner keeps after the loser's push
    sdpo_from_step: int = 0  # with sdpo: plain DPO before this step, SDPO from it (a DPO → SDPO schedule)
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
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate autocast; GPU)
    gradient_accumulation_steps: int = 1  # batches of pairs per optimiser step
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (an error if bitsandbytes is absent)
    checkpoint_every: int = 0  # accelerate save_state period in steps (0 = none); --resume latest


@dataclass(frozen=True)
class DpoModelConfig:
    backend: str = "pixel"  # "pixel" (reference = a pixel checkpoint) | "sd-inpaint"
    sd: SDModelConfig = field(default_factory=SDModelConfig)  # sd-inpaint: base pipeline, LoRA


@dataclass(frozen=True)
class ValConfig:
    root: str = "data/bench64"  # benchmark root for validation items
    split: str = "val"  # split of the training domains (never the held-out domain)
    max_items: int = 16  # tumor items with a GT negative, the first N (0 = all)
    steps: int = 10  # DDIM steps per validation sample
    seed: int = 12345  # sampling seed, the same at every validation
    psnr_tolerance_db: float = 0.5  # a checkpoint may lose at most this inside-mask PSNR vs the reference


@dataclass(frozen=True)
class DpoConfig:
    output_dir: str = "runs/generator/dpo"  # log.jsonl, best/ (pixel checkpoint), summary.json
    # pixel: reference checkpoint dir ("" = the embedded default); sd-inpaint: the reference
    # LoRA dir on model.sd.pretrained ("" = the base pipeline is the reference)
    reference: str = ""
    model: DpoModelConfig = field(default_factory=DpoModelConfig)
    pairs: str = "runs/generator/dpo_pairs"  # directory written by generator.pairs
    pair_kinds: tuple[str, ...] = ("sample",)  # which pair kinds train: sample | gt | positive
    held_out_domain: str = "retina"  # excluded from validation too
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: DpoOptimConfig = field(default_factory=DpoOptimConfig)
    val: ValConfig = field(default_factory=ValConfig)
