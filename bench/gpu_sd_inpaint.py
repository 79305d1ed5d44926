"""SD-1.5 inpainting at real size on one GPU: DPO step cost (LoRA / full) and inference images/s.

    python bench/gpu_sd_inpaint.py --device cuda                          # a lent GPU, ~3-5 min
    OMP_NUM_THREADS=1 python bench/gpu_sd_inpaint.py --toy --device cpu   # the same code, tiny

(Through the device tool: the wheels to carry and the exact ``run`` are in its bench/RESULTS.md
section, ``bench/results/gpu_sd_inpaint.md``.)

No hub here: the pipeline is SD-1.5-inpainting's published architecture (``SD15`` below; ``TOY`` =
the tests' tiny pipeline) with random weights, saved once (fp16) and loaded by the project's loaders.
(a)/(b) DPO through ``generator.sd_backend.SDInpaintTrainBackend`` (LoRA rank 8 on to_q/k/v/out.0,
reference = adapters off; or ``adapter: full``, reference = a frozen copy) with the loss, lr and clip
of ``configs/gpu/sd_inpaint_lora_dpo.yaml`` (SDPO, MI + no-copy on the decoded x̂0), 4 pairs (UNet
batch 8) at 512², bf16 autocast, frozen weights in bf16 as ``generator.dpo``; a step =
``preference_step_losses`` (VAE encoding included) + backward + clip + AdamW; gradient checkpointing
on and off. Median/min step after warm-up, peak ``torch.cuda.max_memory_allocated`` since the backend
was built (CPU: the process's ``ru_maxrss``, which only grows), the gradient norm (gradients flow).
(c) inference through ``generator.modeling.sd_inpaint.inpaint`` (the service's call: guidance 1.0,
the fixed prompt, strength 1.0 so all 50 steps run, VAE decode and the copy to numpy included),
fp16 and bf16, batch 1/4/8/16, plus one fp16 batch-1 row at guidance 7.5 (diffusers' default: UNet
on 2x the batch) beside the 1.59 s/image A100 anchor (diffusers, batch 1, fp16).

Each part is in its own try/except (an OOM or error is the row's status); parts not started within
``--budget-s`` are skipped; the script exits 0 with what it measured. Writes ``gpu_sd_inpaint.md``
and ``.json`` to ``--out`` (default ``$OUT`` when set, the device tool's output folder; else
``bench/results/``, or ``bench/out/`` with ``--toy``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.gpu_sd_inpaint_report import render

ROOT = Path(__file__).resolve().parents[1]
DPO_CONFIG = ROOT / "configs/gpu/sd_inpaint_lora_dpo.yaml"  # loss, lr, clip, batch of the real run

# SD-1.5 inpainting (runwayml/stable-diffusion-inpainting): unet/, vae/, text_encoder/ (CLIP
# ViT-L/14's text tower), scheduler/ configs as published. ``TOY``: generator/modeling/sd_offline.py.
SD15 = {
    "unet": dict(
        in_channels=9, out_channels=4, sample_size=64, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1, mid_block_scale_factor=1,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
        sample_size=512, scaling_factor=0.18215,
    ),
    "text": dict(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
    ),
    "scheduler": dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
    ),
}
TOY = {
    "unet": dict(
        in_channels=9, out_channels=4, sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32, scaling_factor=0.18215,
    ),
    "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=16, vocab_size=1000),
    "scheduler": SD15["scheduler"],
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def build_pipeline(out: Path, sizes: dict, *, device: str, seed: int = 0) -> Path:
    """Random-init ``StableDiffusionInpaintPipeline`` of ``sizes`` written to ``out`` in fp16
    (weights are created on ``device``: SD's 1.07 B parameters initialise in seconds on a GPU)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from generator.modeling.sd_offline import offline_tokenizer

    torch.manual_seed(seed)
    tokenizer = offline_tokenizer(sizes["text"]["max_position_embeddings"])
    text_cfg = CLIPTextConfig(**sizes["text"], bos_token_id=0, eos_token_id=1, pad_token_id=1)
    try:
        with torch.device(device):
            unet, vae = UNet2DConditionModel(**sizes["unet"]), AutoencoderKL(**sizes["vae"])
            text = CLIPTextModel(text_cfg)
    except Exception as err:  # noqa: BLE001 — slower, but the same weights' shapes
        print(f"init on {device} failed ({_error(err)}); initialising on the CPU", flush=True)
        unet, vae = UNet2DConditionModel(**sizes["unet"]), AutoencoderKL(**sizes["vae"])
        text = CLIPTextModel(text_cfg)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**sizes["scheduler"]), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to("cpu", torch.float16).save_pretrained(out)
    return out


# -- measuring -----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float:
    """Peak GPU memory allocated since the last reset; on CPU the process's peak RSS (GiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _error(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "OOM"
    return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


def dpo_part(pipe_dir: Path, *, adapter: str, checkpointing: bool, device: str, warmup: int,
             steps: int) -> dict:
    """Median DPO step of ``adapter`` ("lora" | "full") with/without gradient checkpointing."""
    from generator.backends import WEIGHT_DTYPES, make_optimizer
    from generator.dpo import DpoConfig, preference_step_losses
    from generator.modeling.sd_offline import pair_batch
    from generator.sd_backend import SDInpaintTrainBackend
    from shared.config import load_config

    cfg = load_config(DpoConfig, DPO_CONFIG)
    sd = dataclasses.replace(cfg.model.sd, pretrained=str(pipe_dir), adapter=adapter,
                             gradient_checkpointing=checkpointing, resolution=0, init_lora="")
    precision = cfg.optim.mixed_precision
    backend = SDInpaintTrainBackend(sd, device=device, need_reference=True,
                                    weight_dtype=WEIGHT_DTYPES[precision])
    params = backend.trainable_parameters()
    opt = make_optimizer(params, lr=cfg.optim.lr)
    pairs = pair_batch(cfg.optim.batch_size, side=backend.resolution, seed=0)
    gen = torch.Generator().manual_seed(0)
    _sync(device)
    setup_gib = (torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda")
                 else _peak_gib(device))
    times, norms, losses = [], [], []
    amp = DTYPES.get(precision)  # None for "no": fp32
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            parts = preference_step_losses(backend, pairs, cfg.loss, gen)
        parts["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            norms.append(float(norm))
            losses.append(float(parts["loss"].detach()))
    row = {"part": "dpo", "adapter": adapter, "checkpointing": checkpointing,
           "precision": precision, "batch_pairs": cfg.optim.batch_size,
           "resolution": backend.resolution, "steps": steps, "warmup": warmup,
           "step_s": statistics.median(times), "step_s_min": min(times),
           "setup_gib": setup_gib, "peak_gib": _peak_gib(device),
           "grad_norm": statistics.median(norms), "loss": losses[-1],
           "trained_params": sum(p.numel() for p in params),
           "unet_params": sum(p.numel() for p in backend.raw.parameters())}
    return row


def _infer_once(pipe, prompt_embeds: torch.Tensor, images: torch.Tensor, holes: torch.Tensor, *,
                guidance: float, steps: int, device: str) -> float:
    """Seconds for one batch: images (B,3,R,R) and holes (B,1,R,R) in [0,1] → (B,R,R,3) numpy."""
    from generator.modeling import sd_inpaint

    batch, side = images.shape[0], images.shape[-1]
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    _sync(device)
    t0 = time.perf_counter()
    if guidance == 1.0:  # the service's call
        sd_inpaint.inpaint(pipe, prompt_embeds, images, holes, gens, steps=steps, strength=1.0)
    else:  # classifier-free guidance against an empty-prompt embedding (zeros here)
        embeds = prompt_embeds.expand(batch, -1, -1)
        pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), image=images,
             mask_image=holes, height=side, width=side, strength=1.0, num_inference_steps=steps,
             guidance_scale=guidance, generator=gens, output_type="np")
    _sync(device)
    return time.perf_counter() - t0


def inference_part(pipe_dir: Path, *, dtype: str, batches: tuple[int, ...], steps: int,
                   timed: int, device: str, deadline: float, anchor_row: bool) -> list[dict]:
    """Images/s of the service's ``inpaint`` (guidance 1.0, strength 1.0) per batch size."""
    from generator.build import SDInpaintBackend
    from generator.modeling import sd_inpaint
    from generator.modeling.sd_offline import pair_batch

    cases = [(b, 1.0) for b in batches] + ([(1, 7.5)] if anchor_row else [])
    if time.perf_counter() > deadline:
        return [{"part": "inference", "dtype": dtype, "batch": b, "guidance": g,
                 "status": "skipped: time budget"} for b, g in cases]
    pipe = sd_inpaint.load_pipeline(pipe_dir, device=device, dtype=DTYPES[dtype])
    backend = SDInpaintBackend(pipe)  # embeds the fixed prompt once, as the service does
    side = backend.resolution
    rows = []
    for batch, guidance in cases:
        row = {"part": "inference", "dtype": dtype, "batch": batch, "guidance": guidance,
               "steps": steps, "timed": timed, "resolution": side}
        rows.append(row)
        if time.perf_counter() > deadline:
            row["status"] = "skipped: time budget"
            continue
        try:
            _release(device)
            data = pair_batch(batch, side=side, seed=batch)
            images = data["image"].expand(-1, 3, -1, -1).to(device)
            holes = data["hole"].to(device)
            args = (pipe, backend.prompt_embeds, images, holes)
            kw = {"guidance": guidance, "steps": steps, "device": device}
            _infer_once(*args, **kw)  # warm-up (kernels, allocator)
            times = [_infer_once(*args, **kw) for _ in range(timed)]
            med = statistics.median(times)
            row.update(batch_s=med, images_per_s=batch / med, s_per_image=med / batch,
                       peak_gib=_peak_gib(device), status="ok")
        except Exception as err:  # noqa: BLE001 — one failed size must not lose the others
            row["status"] = _error(err)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--toy", action="store_true", help="the tests' tiny pipeline (CPU, < 60 s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: see module doc)")
    p.add_argument("--dpo-warmup", type=int, default=None, help="default 3 (toy 1)")
    p.add_argument("--dpo-steps", type=int, default=None, help="timed DPO steps; default 10 (toy 2)")
    p.add_argument("--infer-steps", type=int, default=None, help="default 50 (toy 2)")
    p.add_argument("--infer-timed", type=int, default=2, help="timed batches per size")
    p.add_argument("--batches", default="1,4,8,16", help="inference batch sizes")
    p.add_argument("--dtypes", default="fp16,bf16", help="inference dtypes")
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="parts not started by then are skipped (the H200 run must end < 8 min)")
    args = p.parse_args(argv)
    toy = args.toy
    args.dpo_warmup = args.dpo_warmup if args.dpo_warmup is not None else (1 if toy else 3)
    args.dpo_steps = args.dpo_steps if args.dpo_steps is not None else (2 if toy else 10)
    args.infer_steps = args.infer_steps if args.infer_steps is not None else (2 if toy else 50)
    if args.out is None:
        env = os.environ.get("OUT")
        args.out = Path(env) if env else ROOT / ("bench/out" if toy else "bench/results")
    return args


def run_parts(pipe_dir: Path, args: argparse.Namespace, deadline: float) -> list[dict]:
    """Every DPO and inference row, in order; a failing part's rows carry the error."""
    rows: list[dict] = []
    for adapter, ckpt in (("lora", True), ("lora", False), ("full", True), ("full", False)):
        row = {"part": "dpo", "adapter": adapter, "checkpointing": ckpt,
               "status": "skipped: time budget"}
        if time.perf_counter() < deadline:
            try:
                row = {**dpo_part(pipe_dir, adapter=adapter, checkpointing=ckpt, device=args.device,
                                  warmup=args.dpo_warmup, steps=args.dpo_steps), "status": "ok"}
            except Exception as err:  # noqa: BLE001 — OOM (full FT) is a result, not a crash
                row["status"] = _error(err)
        _release(args.device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    batches = tuple(int(b) for b in args.batches.split(","))
    for dtype in (d for d in args.dtypes.split(",") if d):
        try:
            part = inference_part(pipe_dir, dtype=dtype, batches=batches, steps=args.infer_steps,
                                  timed=args.infer_timed, device=args.device, deadline=deadline,
                                  anchor_row=dtype == "fp16")
        except Exception as err:  # noqa: BLE001 — e.g. loading failed: every size gets the error
            cases = [(b, 1.0) for b in batches] + ([(1, 7.5)] if dtype == "fp16" else [])
            part = [{"part": "inference", "dtype": dtype, "batch": b, "guidance": g,
                     "status": _error(err)} for b, g in cases]
        _release(args.device)
        rows += part
        for r in part:
            print(json.dumps(r), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (full FT master weights)
        torch.backends.cudnn.allow_tf32 = True
    import diffusers
    import peft

    sizes = TOY if args.toy else SD15
    with tempfile.TemporaryDirectory(prefix="sd15_") as tmp:
        try:
            pipe_dir = build_pipeline(Path(tmp) / "pipe", sizes, device=args.device)
            build_s = time.perf_counter() - start
            print(f"built and saved the pipeline in {build_s:.1f} s", flush=True)
            _release(args.device)
            rows = run_parts(pipe_dir, args, deadline=start + args.budget_s)
        except Exception as err:  # noqa: BLE001 — still write the table, with the error
            build_s, rows = time.perf_counter() - start, [
                {"part": "dpo", "adapter": "lora", "checkpointing": True,
                 "status": f"pipeline not built: {_error(err)}"}]
    dpo_ok = next((r for r in rows if r["part"] == "dpo" and r["status"] == "ok"), {})
    meta = {
        "command": "python bench/gpu_sd_inpaint.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "toy": args.toy, "cuda": cuda,
        "device_name": torch.cuda.get_device_name(args.device) if cuda
        else f"{platform.machine()} CPU, torch threads: {torch.get_num_threads()}",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "arch": ("the tests' tiny 9-channel pipeline (UNet 32/64, VAE 32/64, CLIP text hidden 32)"
                 if args.toy else "SD-1.5 inpainting (UNet 320/640/1280/1280, 9 input channels, "
                 "cross-attention 768; VAE 128/256/512/512; CLIP ViT-L/14 text encoder)"),
        "unet_params": dpo_ok.get("unet_params", 0), "batch_pairs": dpo_ok.get("batch_pairs", 4),
        "precision": dpo_ok.get("precision", "bf16"),
        "resolution": sizes["unet"]["sample_size"] * 2 ** (len(sizes["vae"]["block_out_channels"]) - 1),
        "dpo_steps": args.dpo_steps, "dpo_warmup": args.dpo_warmup, "infer_steps": args.infer_steps,
        "infer_timed": args.infer_timed, "scheduler": "PNDM", "build_s": build_s,
        "total_s": time.perf_counter() - start,
    }
    text = render(meta, rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_sd_inpaint.md").write_text(text)
    (args.out / "gpu_sd_inpaint.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out / 'gpu_sd_inpaint.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
