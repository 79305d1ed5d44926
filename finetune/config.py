"""Configuration of a fine-tuning run: frozen dataclasses, read from YAML by ``shared.config``.

``accelerate launch finetune/run.py --config configs/embedded/stage12.yaml optim.lr=1e-4`` builds a
:class:`TrainConfig` with :func:`load_train_config`; :func:`validate` refuses settings that would
silently train nothing (e.g. a warmup longer than the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetune.augment import AugmentConfig
from shared.config import ConfigError, check_out_dir, load_config

OBJECTIVES = ("clip", "clip+dense", "dhn", "dhn+entropy", "dpo", "stage1", "stage2", "stage1+2")
NEGATIVE_SOURCES = ("none", "service", "inprocess", "normal", "gt", "dpo_csv")
TRAINABLE_PARTS = ("image", "text", "logit_scale")
NEEDS_NEGATIVES = ("dpo", "stage2", "stage1+2")


@dataclass(frozen=True)
class DataConfig:
    """Where positives (image, mask, caption) come from."""

    # "benchmark": a shared.benchmark folder (manifest.jsonl); "medclip": MedCLIP-SAMv2 layout
    # root/<task>/{split}_{images,masks}; "dpo_csv": the researcher's DPO CSV (paths relative to root;
    # rows outside data.split or in held_out_domains are left out; negatives also found beside the CSV).
    kind: str = "benchmark"
    root: str = "data/bench"  # folder of the data (benchmark out dir / MedCLIP-SAMv2 root)
    split: str = "train"  # which split trains
    # benchmark: domains used for training; empty = every domain except the held-out ones.
    domains: tuple[str, ...] = ()
    # Never trained on (the "external" domain of the acceptance numbers); for the medclip layout,
    # the task folders of these names.
    held_out_domains: tuple[str, ...] = ("chest_xray",)
    tasks: tuple[str, ...] = ()  # medclip: task folders to use (empty = all)
    csv: str = ""  # dpo_csv: the CSV path
    include_normals: bool = True  # clip objective: also train on lesion-free images (their captions)
    # benchmark: also train on each positive's exact GT negative, captioned with caption_neg
    # (pre-training the embedded CLIP: pairs that differ only by the lesion)
    include_gt_negatives: bool = False
    # benchmark: share of positives, drawn anew each step, whose caption is replaced by the task's
    # one caption (modality + noun: "A brain MRI showing a brain tumor.", as configs/prompts/ gives
    # a user), so the image-text and patch-caption terms also learn the text a user scores with
    generic_caption_prob: float = 0.0
    max_items: int = 0  # 0 = all; else the first N after sorting (tiny tests, quick demos)
    # Caption used for MedCLIP-SAMv2 data, which has none ({task} is replaced by the task name).
    default_caption: str = "a medical image of {task} showing a tumor"
    default_caption_neg: str = "a medical image of {task} showing no signs of pathology"


@dataclass(frozen=True)
class NegativesConfig:
    """Where negatives (the same image without the lesion) come from, and how they are cached."""

    # none | service (HTTP; url or env NEGATIVES_URL) | inprocess (generator predictor) |
    # normal (a real lesion-free image of the same domain) | gt (benchmark's exact GT negative) |
    # dpo_csv (the CSV's filename_neg column). "service" falls back to "inprocess" when no URL.
    source: str = "service"
    url: str = ""  # generator service base URL; empty -> env NEGATIVES_URL -> in-process
    api_key: str = ""  # bearer token for the service (empty -> env NEGATIVES_API_KEY)
    # in-process: load_generator(path_or_name); empty = embedded default; "biharmonic" = no
    # learned backend, classical inpainting through the predictor (with method=biharmonic)
    generator: str = ""
    cache_dir: str = "runs/negatives_cache"  # content-addressed PNG cache shared across runs
    steps: int = 20  # sampler steps asked of the generator
    strength: float = 1.0  # generation strength (1 = full re-synthesis inside the mask)
    dilation_px: int = 2  # mask dilation radius in pixels before filling
    method: str = "diffusion"  # generator method (diffusion | latent-boundary | biharmonic ...)
    # projection radiographs only: σ px of the input's high-pass the fill keeps, and the fill stays
    # at or below the input (the lesion only added density); 0 = off (MRI, ultrasound, fundus)
    see_through_px: float = 0.0
    seed: int = 0  # sample seed (sample k uses seed + k on the generator side)
    max_concurrency: int = 8  # concurrent HTTP requests
    max_retries: int = 6  # retries on 503/504/connection errors
    timeout_s: float = 300.0  # per-request timeout


@dataclass(frozen=True)
class ObjectiveConfig:
    """The loss and its weights (formulas in finetune.losses / finetune.objectives)."""

    name: str = "clip"  # one of OBJECTIVES
    clip_weight: float = 1.0  # anchoring image-text InfoNCE kept next to Stage 1/2/DPO
    tau: float = 0.6  # DHN-NCE temperature (MedCLIP-SAMv2)
    beta1: float = 0.15  # DHN-NCE hardness, image->text
    beta2: float = 0.15  # DHN-NCE hardness, text->image
    entropy_weight: float = 0.1  # attention-entropy weight (dhn+entropy)
    entropy_blocks: tuple[int, ...] = (-1,)  # ViT blocks whose attention enters the entropy
    entropy_mode: str = "min"  # min (sharpen) | max | hinge
    entropy_min: float = 0.3  # hinge floor on normalised entropy
    dpo_beta: float = 10.0  # DPO inverse temperature (researcher: 10)
    dpo_kl_weight: float = 0.1  # KL(pi_theta || pi_ref) anchor of the DPO objective
    ot_weight: float = 0.7  # Stage 1 Sinkhorn-divergence weight (EgoBridge 0.7)
    ot_epsilon: float = 0.1  # Sinkhorn entropic regularisation
    ot_iters: int = 30  # Sinkhorn iterations
    proto_tau: float = 0.1  # prototype-vs-background InfoNCE temperature
    contrastive_weight: float = 1.0  # Stage 1 prototype InfoNCE weight
    stage2_weight: float = 1.0  # final Stage 2 weight (curriculum ramps up to it)
    stage2_margin: float = 0.2  # cosine margin of the Stage 2 push
    # Stage 2 curriculum: weight 0 until start_frac of the run, linear to stage2_weight at end_frac.
    stage2_start_frac: float = 0.0
    stage2_end_frac: float = 0.5
    # Stage 2's form: "hinge" = losses.stage2 (negative patches vs the tumour prototype + global
    # hinge on cos(negative, positive)); "counterfactual" = losses.stage2_counterfactual (tokens
    # differ inside the mask, agree outside) and each negative enters the image-text InfoNCE with
    # its lesion-free caption; "text" = losses.stage2_text (the lesion, and only it, moves the
    # image and its patches from the lesion-free caption to the lesion caption; the twin says
    # what the lesion contributes)
    stage2_form: str = "hinge"
    # clip+dense: weight and temperature of patch_losses.patch_text_loss (patch embeddings scored
    # between their image's lesion and lesion-free captions, target = patch lesion fraction)
    dense_weight: float = 1.0
    dense_tau: float = 0.1
    # clip+dense: weight of the term's spatial cross-entropy (the lesion as a distribution over
    # patches, patch_losses.patch_text_loss "spatial"); 0 = off (the committed weights' pre-training)
    spatial_weight: float = 0.0
    # Fine-tuning objectives (clip, dpo, stage1/2): weight of the same patch-caption term added to
    # their anchor, so a fine-tune keeps what the embedded model was pre-trained with (its patch
    # alignment: the M2IB pointing). 0 = off (the published objectives as they are).
    anchor_dense_weight: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay."""

    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (CLIP's)
    warmup_steps: int = 10  # linear warmup; must be < max_steps (validate refuses otherwise)
    max_steps: int = 100  # optimizer steps of the run
    grad_clip: float = 1.0  # max grad norm (0 = off)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run."""

    model: str = "embedded-pretrained"  # finetune.build source, or "embedded-pretrained"
    output_dir: str = "runs/finetune"  # checkpoints, TensorBoard logs, exported model
    seed: int = 0  # everything random derives from it (batches, dropout, init of nothing else)
    batch_size: int = 32  # GLOBAL batch per optimizer step (split over processes and accumulation)
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # no | bf16 | fp16 (fp16 needs a GPU)
    trainable: tuple[str, ...] = ("image",)  # parts trained: image, text, logit_scale
    checkpoint_every: int = 50  # save_state every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # the newest N step_* folders are kept, older ones deleted (0 = all)
    resume: str = "auto"  # auto (latest in output_dir if any) | none | a checkpoint folder
    log_every: int = 10  # TensorBoard / monitor logging period (steps)
    export_hf_port: bool = False  # also write MedCLIP-SAMv2's HF-port layout
    export_fp16: bool = False  # store exported weights in fp16 (embedded weights budget)
    num_threads: int = 1  # torch threads per process (2 CPU cores shared -> 1)
    # WiSE-FT (Wortsman et al., CVPR 2022): the exported weights are θ0 + α·(θ − θ0), θ0 the
    # starting model, θ the fine-tuned one; 1 = the fine-tune as trained, 0 = the start unchanged.
    # Trades the fine-tune's gain against what it erased (issue 17, "no harm").
    wise_alpha: float = 1.0
    # ... and the vision tower's stem and first N blocks exported at θ0 (α = 0 there; 0 = off): a
    # fine-tune costs the early blocks' M2IB map (bench/results/negatives_early_blocks.md).
    wise_early_blocks: int = 0
    # BatchNorm layers (the conv stem's) stay in eval mode while training: their running statistics
    # are not re-estimated on the fine-tuning batches; on breast (one-seed diagnostic) those
    # statistics carried the fine-tunes' measurable effect (bench/results/negatives_early_blocks.md).
    # False = torch's default; the 3-seed test kept it off (Stage 1 still lost pointing;
    # on a real external scan the re-estimated statistics helped: negatives_frozenbn.md).
    freeze_bn_stats: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # finetune.augment


def validate(cfg: TrainConfig, *, world_size: int = 1) -> None:
    """Raise ConfigError on settings that cannot train as intended (names the field)."""
    o = cfg.optim
    if cfg.objective.name not in OBJECTIVES:
        raise ConfigError(f"objective.name={cfg.objective.name!r}; expected one of {OBJECTIVES}")
    if o.max_steps < 1:
        raise ConfigError(f"optim.max_steps must be >= 1, got {o.max_steps}")
    if o.warmup_steps >= o.max_steps:
        raise ConfigError(
            f"optim.warmup_steps={o.warmup_steps} is not shorter than optim.max_steps={o.max_steps}: "
            "the learning rate would never leave warmup (a 10k-step warmup on a 140-step run "
            "trains at lr ~0). Use a warmup of a few percent of the run."
        )
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if not 0.0 <= cfg.wise_alpha <= 1.0:
        raise ConfigError(f"wise_alpha must lie in [0, 1], got {cfg.wise_alpha}")
    if cfg.wise_early_blocks < 0:
        raise ConfigError(f"wise_early_blocks must be >= 0 (0 = off), got {cfg.wise_early_blocks}")
    if cfg.negatives.source not in NEGATIVE_SOURCES:
        raise ConfigError(f"negatives.source={cfg.negatives.source!r}; expected {NEGATIVE_SOURCES}")
    if not cfg.negatives.see_through_px >= 0:
        raise ConfigError(f"negatives.see_through_px must be >= 0, got {cfg.negatives.see_through_px}")
    if cfg.objective.name in NEEDS_NEGATIVES and cfg.negatives.source == "none":
        raise ConfigError(f"objective {cfg.objective.name!r} needs negatives; negatives.source=none")
    bad = [p for p in cfg.trainable if p not in TRAINABLE_PARTS]
    if bad or not cfg.trainable:
        raise ConfigError(f"trainable={list(cfg.trainable)}; choose from {TRAINABLE_PARTS}")
    check_out_dir("output_dir", cfg.output_dir)
    for key in ("grad_accum", "log_every", "num_threads"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key, zero in (("checkpoint_every", "only at the end"), ("keep_checkpoints", "keep all")):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = {zero}), got {getattr(cfg, key)}")
    if cfg.resume not in ("auto", "none") and not Path(cfg.resume).is_dir():
        raise ConfigError(f"resume={cfg.resume!r}: no such checkpoint folder (or auto | none)")
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step or cfg.batch_size // per_step < 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must split into {world_size} process(es) x "
            f"{cfg.grad_accum} accumulation step(s) of >= 2 samples each"
        )
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"mixed_precision={cfg.mixed_precision!r}; expected no | bf16 | fp16")
    if cfg.data.kind not in ("benchmark", "medclip", "dpo_csv"):
        raise ConfigError(f"data.kind={cfg.data.kind!r}; expected benchmark | medclip | dpo_csv")
    ob = cfg.objective
    if not 0.0 <= ob.stage2_start_frac <= ob.stage2_end_frac <= 1.0:
        raise ConfigError("objective.stage2_start_frac <= stage2_end_frac must lie in [0, 1]")
    if ob.stage2_form not in ("hinge", "counterfactual", "text"):
        raise ConfigError(f"objective.stage2_form={ob.stage2_form!r}; expected hinge | "
                          "counterfactual | text")
    if ob.anchor_dense_weight < 0:
        raise ConfigError(f"objective.anchor_dense_weight must be >= 0, got {ob.anchor_dense_weight}")
    if ob.dense_tau <= 0:
        raise ConfigError(f"objective.dense_tau must be > 0, got {ob.dense_tau}")
    a = cfg.augment
    if not (1.0 <= a.zoom[0] <= a.zoom[1] and 0 < a.gamma[0] <= a.gamma[1]
            and 0 <= a.contrast[0] <= a.contrast[1]):
        raise ConfigError("augment: zoom needs 1 <= lo <= hi, gamma 0 < lo <= hi, contrast "
                          f"0 <= lo <= hi; got zoom={a.zoom}, gamma={a.gamma}, contrast={a.contrast}")
    if not (0 <= a.lut_prob <= 1 and 0 <= a.low_res_prob <= 1 and a.lut_knots >= 2
            and a.max_downsample >= 1):
        raise ConfigError("augment: lut_prob and low_res_prob need 0..1, lut_knots >= 2, "
                          f"max_downsample >= 1; got lut_prob={a.lut_prob}, low_res_prob="
                          f"{a.low_res_prob}, lut_knots={a.lut_knots}, max_downsample={a.max_downsample}")
    if not (o.weight_decay >= 0 and o.grad_clip >= 0 and 0 <= o.min_lr_ratio <= 1
            and all(0 <= b < 1 for b in o.betas)):
        raise ConfigError("optim: weight_decay and grad_clip need >= 0 (grad_clip 0 = off), "
                          "min_lr_ratio 0..1, betas in [0, 1); got weight_decay="
                          f"{o.weight_decay}, grad_clip={o.grad_clip}, min_lr_ratio={o.min_lr_ratio}, "
                          f"betas={list(o.betas)}")
    n = cfg.negatives
    if n.steps < 1 or not 0 < n.strength <= 1 or n.dilation_px < 0 or n.seed < 0:
        raise ConfigError("negatives: steps >= 1, strength in (0, 1], dilation_px >= 0, seed >= 0; "
                          f"got steps={n.steps}, strength={n.strength}, dilation_px={n.dilation_px}, "
                          f"seed={n.seed}")
    if not 0.0 <= cfg.data.generic_caption_prob <= 1.0:
        raise ConfigError("data.generic_caption_prob must be in [0, 1], got "
                          f"{cfg.data.generic_caption_prob}")
    if cfg.data.generic_caption_prob > 0 and cfg.data.kind != "benchmark":
        raise ConfigError("data.generic_caption_prob needs data.kind=benchmark (its captions "
                          f"describe each lesion), got data.kind={cfg.data.kind}")
    if cfg.data.max_items < 0:
        raise ConfigError(f"data.max_items must be >= 0 (0 = all), got {cfg.data.max_items}")
    import torch

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision=fp16 needs a CUDA GPU (on CPU it was silently full "
                          "precision); use no or bf16")
    if ob.entropy_mode not in ("min", "max", "hinge"):
        raise ConfigError(f"objective.entropy_mode={ob.entropy_mode!r}; expected min | max | hinge")


def load_train_config(path: str | Path | dict | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or dict) plus ``key.sub=value`` overrides into a :class:`TrainConfig`."""
    return load_config(TrainConfig, path, overrides or [])
