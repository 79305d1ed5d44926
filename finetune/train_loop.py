"""The training loop: ``train(cfg) -> output_dir`` (accelerate: DDP, accumulation, mixed precision,
save_state/resume, TensorBoard tracker).

Determinism: batch composition is a pure function of (seed, step) (:func:`batch_indices`) and the
torch RNG is re-seeded from (seed, step, micro-batch, rank) before every forward, so a resumed run
replays exactly the steps an uninterrupted one would, and N processes see the same global batch
as one process (each takes its slice; features are gathered for the contrastive terms).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs

from finetune.augment import AugmentConfig, augment_batch
from finetune.build import PRETRAINED_DIRS, build_clip
from finetune.config import TrainConfig, validate
from finetune.data import TrainDataError, TrainTensors, build_tensors, load_samples, normalise
from finetune.export import export_hf_port, export_local_dir
from finetune.features import ClipFeatures
from finetune.modeling.vit import batchnorm_layers, has_single_patch_conv, image_channels
from finetune.negatives import resolve_negatives
from finetune.objectives import compute_objective, needs_of
from finetune.ot import not_converged_count
from finetune.patch_losses import patch_soft_mask
from shared.benchmark.lesions import generic_caption
from shared.config import ConfigError, to_dict
from shared.io import write_json_atomic
from shared.launch import check_joined, use_cpu
from shared.progress import progress

EMBEDDED_PRETRAINED = PRETRAINED_DIRS["embedded-pretrained"]
CHECKPOINTS = "checkpoints"
EXPORT = "model"


def resolve_model_source(name: str) -> str:
    """``embedded-pretrained`` / ``embedded-convstem8-pretrained`` -> the committed weights' local
    dir (``finetune.build.PRETRAINED_DIRS``); others unchanged."""
    if name in PRETRAINED_DIRS:
        return f"local-dir:{PRETRAINED_DIRS[name]}"
    return name


def batch_indices(step: int, *, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Global batch of optimizer step ``step``: positions [step·B, (step+1)·B) of the stream of
    per-epoch permutations ``perm(seed, epoch)`` of range(n)."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(pos // n):
        sel = pos // n == epoch
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        out[sel] = perm[pos[sel] % n]
    return out


def lr_lambda(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps (from 1/warmup), then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_trainable(model: torch.nn.Module, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the named parts; returns the trainable parameters."""
    model.requires_grad_(False)
    if "image" in parts:
        model.visual.requires_grad_(True)
    if "text" in parts:
        model.text.requires_grad_(True)
    if "logit_scale" in parts:
        model.logit_scale.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def is_early_vision_key(key: str, n_blocks: int) -> bool:
    """True for the vision trunk's input layers (all of ``visual.trunk`` before its blocks: patch /
    conv stem, class token, positional embedding) and its blocks ``0 … n_blocks − 1`` (timm ViT
    naming, as in BiomedCLIP and the embedded models)."""
    if not key.startswith("visual.trunk.") or n_blocks < 1:
        return False
    rest = key[len("visual.trunk."):]
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) < n_blocks
    return rest.split(".")[0] in ("patch_embed", "cls_token", "pos_embed", "reg_token")


def interpolate_weights(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        alpha: float, *, early_blocks: int = 0) -> dict[str, torch.Tensor]:
    """WiSE-FT weight-space ensemble (Wortsman et al., "Robust fine-tuning of zero-shot models",
    CVPR 2022): ``θ_α = θ0 + α·(θ − θ0)`` for every floating-point tensor of the state dict
    (same keys and shapes in both); integer buffers are taken from ``tuned``. α = 1 returns the
    fine-tune, α = 0 the start, bit-exactly. ``early_blocks`` = N > 0: the vision stem and
    blocks < N (:func:`is_early_vision_key`) are the start's, buffers included (α = 0 there)."""
    if start.keys() != tuned.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(start.keys() ^ tuned.keys())[:5]}")
    out = {}
    for k, t in tuned.items():
        if is_early_vision_key(k, early_blocks):
            out[k] = start[k].to(t.dtype)
        elif alpha == 1.0 or not t.is_floating_point():
            out[k] = t
        elif alpha == 0.0:
            out[k] = start[k].to(t.dtype)
        else:
            out[k] = (start[k].to(t.dtype) + alpha * (t - start[k].to(t.dtype))).to(t.dtype)
    return out


def _checkpoint_step(ckpt: Path) -> int | None:
    """The step a checkpoint folder holds, None if it is incomplete (``trainer_state.json`` is
    written last, atomically; a run killed before that leaves a folder without one)."""
    try:
        return int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted((output_dir / CHECKPOINTS).glob("step_*"))
    ckpts = [c for c in ckpts if _checkpoint_step(c) is not None]
    return ckpts[-1] if ckpts else None


# Settings a resumed run may change: where and how often it reports and saves, its threads, and
# how long it runs (a longer max_steps continues the run; its lr schedule follows the new length).
RESUMABLE = ("resume", "log_every", "checkpoint_every", "keep_checkpoints", "num_threads",
             "optim.max_steps", "output_dir")


def check_resumable(cfg: TrainConfig, out: Path, start: int, auto: bool) -> None:
    """A checkpoint found in ``output_dir`` is resumed only by the run that made it: every setting
    but ``RESUMABLE`` must equal the folder's ``config.json`` (a rerun with another objective or
    learning rate printed "done" over the old run's weights), and it must not be past
    ``optim.max_steps`` (it exported the longer run's state as the shorter one)."""
    saved = out / "config.json"
    if auto and saved.is_file():
        try:
            before = _flat(json.loads(saved.read_text()))
        except (OSError, ValueError):
            before = {}
        now = _flat(to_dict(cfg))
        diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                if k not in RESUMABLE and before.get(k) != now.get(k)]
        if before and diff:
            raise ConfigError(f"output_dir={out} holds a checkpoint of a run with other settings "
                              f"({'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}): use a new "
                              "output_dir, or resume=none to start this one over there")
    if start > cfg.optim.max_steps:
        raise ConfigError(f"output_dir={out}: its checkpoint is at step {start}, past "
                          f"optim.max_steps={cfg.optim.max_steps}; use a new output_dir")


def _lock(out: Path):
    """An exclusive advisory lock on ``output_dir/.run.lock`` for the run's lifetime (released
    when the process ends, also on kill -9): two runs started into one folder interleaved their
    checkpoints and both said "done". Returns the open file that holds it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fh = (out / ".run.lock").open("w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"output_dir={out} is in use by another run (its .run.lock is held); "
                          "wait for it or use another output_dir") from None
    return fh


def _prepare_data(cfg: TrainConfig, accelerator: Accelerator, grid, image_size) -> TrainTensors:
    needs = needs_of(cfg.objective)
    samples = load_samples(cfg.data, tumors_only=needs.tumors_only)
    negatives = None
    if needs.negatives:
        with accelerator.main_process_first():  # main fills the cache; the others read it
            negatives = resolve_negatives(cfg, samples)
        samples = [s for s in samples if s.id in negatives]
    data = build_tensors(samples, image_size=image_size, grid=grid, negatives=negatives)
    if cfg.data.generic_caption_prob > 0:  # each positive's modality + noun, no description
        generic = [generic_caption(c) if t else c for c, t in zip(data.captions, data.is_tumor,
                                                                  strict=True)]
        if None in generic:
            bad = generic.index(None)
            raise TrainDataError("data.generic_caption_prob > 0 needs benchmark lesion captions; "
                                 f"{data.ids[bad]!r} has {data.captions[bad]!r}")
        data.captions_generic = generic
    return data


def _micro_batch(data: TrainTensors, idx: np.ndarray, tokenizer, norm: dict, needs,
                 augment: AugmentConfig, grid: tuple[int, int], generic_prob: float = 0.0) -> dict:
    """Tensors of one micro-batch; with ``augment`` on, one random draw per sample transforms its
    image, mask and negative alike and the soft masks are recomputed from the warped masks. Then
    (after the augmentation's draws, so they do not move) each positive keeps its own caption or,
    with probability ``generic_prob``, takes its task's one caption (``data.captions_generic``)."""
    t = torch.from_numpy(idx)
    images, masks, negatives = augment_batch(
        data.images[t], data.masks[t], data.negatives[t] if needs.negatives else None, augment)
    captions = [data.captions[i] for i in idx]
    if generic_prob > 0:
        swap = (torch.rand(len(idx)) < generic_prob) & data.is_tumor[t]
        captions = [data.captions_generic[i] if s else c
                    for i, s, c in zip(idx, swap, captions, strict=True)]
    batch = {
        "pixels": normalise(images, **norm),
        "text": tokenizer(captions),
        "soft_mask": patch_soft_mask(masks, grid) if augment.enabled else data.soft_masks[t],
        "is_tumor": data.is_tumor[t],
    }
    if needs.negatives:
        batch["neg_pixels"] = normalise(negatives, **norm)
    if needs.text_neg:
        batch["text_neg"] = tokenizer([data.captions_neg[i] for i in idx])
    return batch


def _forward(model, batch: dict) -> dict:
    return model(batch["pixels"], batch["text"], batch.get("neg_pixels"), batch.get("text_neg"))


def _save(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    ckpt = out / CHECKPOINTS / f"step_{step:06d}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        # written last and atomically: a kill -9 mid-save leaves no state file, never an empty one
        write_json_atomic(ckpt / "trainer_state.json", {"step": step})
        old = sorted((out / CHECKPOINTS).glob("step_*"))[:-keep] if keep > 0 else []
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


def train(cfg: TrainConfig) -> Path:
    """Run the configured fine-tuning; returns ``output_dir`` (exported model in ``OUT/model``)."""
    validate(cfg)  # before anything uses a value (again below with the launched world size)
    torch.set_num_threads(cfg.num_threads)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard",
        project_dir=cfg.output_dir,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        cpu=use_cpu(),
    )
    check_joined(accelerator.num_processes)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    validate(cfg, world_size=world_size)
    out = Path(cfg.output_dir)
    lock = _lock(out) if accelerator.is_main_process else None  # noqa: F841 (held until return)
    start, resume_from = 0, None  # checked before any model or data loads
    if cfg.resume == "auto":
        resume_from = _latest_checkpoint(out)
    elif cfg.resume != "none":
        resume_from = Path(cfg.resume)
    if resume_from is not None:
        start = _checkpoint_step(resume_from)
        if start is None:
            raise ConfigError(f"resume={resume_from}: not a complete checkpoint (no readable "
                              "trainer_state.json; a run killed mid-save leaves such a folder)")
        check_resumable(cfg, out, start, auto=cfg.resume == "auto")
    needs = needs_of(cfg.objective)
    torch.manual_seed(cfg.seed)

    bundle = build_clip(resolve_model_source(cfg.model), device="cpu")
    clip = bundle.model
    trunk = clip.visual.trunk
    if cfg.export_hf_port and not has_single_patch_conv(trunk):
        raise ConfigError(f"export_hf_port=true: model={cfg.model} has a convolutional stem, which "
                          "MedCLIP-SAMv2's HF port (one patch-embedding conv) cannot hold")
    grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
    image_size = int(clip.visual.image_size[0])
    pre = clip.visual.preprocess_cfg
    norm = {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]),
            "channels": image_channels(trunk)}
    data = _prepare_data(cfg, accelerator, grid, image_size)

    start_state = ({k: v.detach().clone() for k, v in clip.state_dict().items()}
                   if cfg.wise_alpha != 1.0 or cfg.wise_early_blocks else None)
    reference = None
    if needs.reference:
        reference = ClipFeatures(copy.deepcopy(clip).eval().requires_grad_(False))
    params = set_trainable(clip, cfg.trainable)
    entropy_blocks = cfg.objective.entropy_blocks if cfg.objective.name == "dhn+entropy" else ()
    model = ClipFeatures(clip, with_tokens=needs.tokens, entropy_blocks=entropy_blocks)
    o = cfg.optim
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=o.betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup=o.warmup_steps, total=o.max_steps,
                                       min_ratio=o.min_lr_ratio))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if accelerator.is_main_process:
            print(f"resuming from step {start} ({resume_from})", flush=True)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    hparams = {k: v for k, v in _flat(to_dict(cfg)).items() if isinstance(v, int | float | str | bool)}
    accelerator.init_trackers("finetune", config=hparams)

    micro = cfg.batch_size // cfg.grad_accum
    local = micro // world_size
    unwrapped = accelerator.unwrap_model(model)
    for module, trainable in ((unwrapped.clip.visual, "image"), (unwrapped.clip.text, "text")):
        module.train(trainable in cfg.trainable)  # locked towers stay in eval (no dropout)
    if cfg.freeze_bn_stats:
        for m in batchnorm_layers(unwrapped.clip):
            m.eval()  # normalise with the start's running statistics, and keep them
    bar = progress(range(start, o.max_steps), initial=start, total=o.max_steps,
                   every=cfg.log_every, disable=not accelerator.is_local_main_process,
                   desc=cfg.objective.name)
    for step in bar:
        idx = batch_indices(step, n=len(data), batch_size=cfg.batch_size, seed=cfg.seed)
        logs: dict[str, float] = {}
        for m in range(cfg.grad_accum):
            mine = idx[m * micro + rank * local: m * micro + (rank + 1) * local]
            torch.manual_seed(hash((cfg.seed, step, m, rank)) % 2**31)
            batch = _micro_batch(data, mine, bundle.tokenizer, norm, needs, cfg.augment, grid,
                                 cfg.data.generic_caption_prob)
            sync = m == cfg.grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx:
                feats = _forward(model, batch)
                ref = None
                if reference is not None:
                    with torch.no_grad():
                        ref = _forward(reference, batch)
                parts = compute_objective(cfg.objective.name, cfg.objective, feats, batch,
                                          step=step, max_steps=o.max_steps, ref_out=ref)
                accelerator.backward(parts["loss"] / cfg.grad_accum)
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        if o.grad_clip > 0:
            logs["grad_norm"] = float(accelerator.clip_grad_norm_(params, o.grad_clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs["lr"] = scheduler.get_last_lr()[0]
        if accelerator.is_local_main_process:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == o.max_steps:
            accelerator.log(logs, step=step + 1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                and step + 1 < o.max_steps:
            _save(accelerator, out, step + 1, cfg.keep_checkpoints)
    _save(accelerator, out, o.max_steps, cfg.keep_checkpoints)
    unconverged = not_converged_count(reset=True)
    if unconverged and accelerator.is_local_main_process:
        print(f"Sinkhorn not converged in {unconverged} of the run's solves (warned once above)",
              flush=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        clip = accelerator.unwrap_model(model).clip.eval()
        if start_state is not None:
            clip = copy.deepcopy(clip)
            clip.load_state_dict(interpolate_weights(start_state, clip.state_dict(), cfg.wise_alpha,
                                                     early_blocks=cfg.wise_early_blocks))
        if cfg.export_fp16:
            clip = copy.deepcopy(clip).half()
        export_local_dir(clip, bundle.tokenizer, bundle.model_cfg or None, out / EXPORT)
        if cfg.export_hf_port:
            export_hf_port(clip, out / "hf_port", tokenizer=bundle.tokenizer)
    accelerator.end_training()
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if not isinstance(v, list) else str(v)
    return flat
