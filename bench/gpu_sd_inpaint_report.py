"""The markdown section of ``bench/gpu_sd_inpaint.py`` (settings, a DPO table and an inference
table) from its ``meta`` and ``rows``; pure formatting, no torch."""

from __future__ import annotations


def _fmt(row: dict, key: str, spec: str, scale: float = 1.0, unit: str = "") -> str:
    v = row.get(key)
    return f"{v * scale:{spec}}{unit}" if isinstance(v, int | float) else "—"


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown section: settings, a DPO table and an inference table."""
    mem = "peak `torch.cuda.max_memory_allocated`" if meta["cuda"] else "peak RSS (`ru_maxrss`, process-wide, only grows)"
    lines = [
        f"## SD-1.5 inpainting on one GPU: DPO step and inference throughput (issue 19){' — TOY' if meta['toy'] else ''}",
        "",
        f"`{meta['command']}` — {meta['device_name']}; torch {meta['torch']}, diffusers "
        f"{meta['diffusers']}, peft {meta['peft']}, Python {meta['python']}; {meta['when']}; "
        f"total {meta['total_s']:.0f} s (building and saving the pipeline {meta['build_s']:.0f} s). "
        f"Architecture: {meta['arch']} with random weights (no hub)"
        + (f"; UNet {meta['unet_params'] / 1e6:.1f} M parameters." if meta["unet_params"] else "."),
        "",
        f"DPO: loss/lr/clip of `configs/gpu/sd_inpaint_lora_dpo.yaml` (SDPO, MI + no-copy on the "
        f"decoded x̂0), {meta['batch_pairs']} pairs per step (UNet batch {2 * meta['batch_pairs']}) "
        f"at {meta['resolution']}², {meta['precision']} autocast, frozen weights in "
        f"{meta['precision']}, AdamW; a step includes VAE-encoding the pairs, the reference forward, "
        f"the policy forward + backward, clipping and the optimiser; median of {meta['dpo_steps']} "
        f"steps after {meta['dpo_warmup']} warm-up. Memory: {mem}, since the backend was built.",
        "",
        "| DPO | grad. checkpointing | trained params | step (median) | step (min) | memory after set-up | peak memory | grad norm | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["part"] == "dpo"):
        trained = (f"{r['trained_params']:,} of {r['unet_params']:,}" if "trained_params" in r
                   else "—")
        lines.append(
            f"| {r['adapter']} | {'on' if r['checkpointing'] else 'off'} | {trained} | "
            f"{_fmt(r, 'step_s', '.3f', unit=' s')} | {_fmt(r, 'step_s_min', '.3f', unit=' s')} | "
            f"{_fmt(r, 'setup_gib', '.2f', unit=' GiB')} | {_fmt(r, 'peak_gib', '.2f', unit=' GiB')} | "
            f"{_fmt(r, 'grad_norm', '.3g')} | {r['status']} |")
    lines += [
        "",
        f"Inference: `generator.modeling.sd_inpaint.inpaint` (the service's call: one fixed prompt, "
        f"guidance 1.0, strength 1.0), {meta['infer_steps']} {meta['scheduler']} steps at "
        f"{meta['resolution']}², VAE decode and the copy to numpy included; median of "
        f"{meta['infer_timed']} timed batches after one warm-up batch. The guidance-7.5 row is "
        "diffusers' default (UNet on 2× the batch), for the anchor: 1.59 s/image on an A100 "
        "(diffusers, batch 1, fp16). Goal: ≥ 2 images/s on the H200 with batching.",
        "",
        "| dtype | batch | guidance | batch time (median) | images/s | s/image | peak memory | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["part"] == "inference"):
        lines.append(
            f"| {r['dtype']} | {r['batch']} | {r['guidance']:g} | {_fmt(r, 'batch_s', '.3f', unit=' s')} | "
            f"{_fmt(r, 'images_per_s', '.2f')} | {_fmt(r, 's_per_image', '.3f', unit=' s')} | "
            f"{_fmt(r, 'peak_gib', '.2f', unit=' GiB')} | {r['status']} |")
    ok = [r for r in rows if r["part"] == "inference" and r.get("status") == "ok"]
    plain = [r for r in ok if r["guidance"] == 1.0]
    if plain:
        best = max(plain, key=lambda r: r["images_per_s"])
        ones = ", ".join(f"{r['s_per_image']:.3f} s/image ({r['dtype']})" for r in plain
                         if r["batch"] == 1)
        cfg = [f"{r['s_per_image']:.3f} s/image" for r in ok if r["guidance"] != 1.0]
        lines += ["", f"Best: {best['images_per_s']:.2f} images/s ({best['dtype']}, batch "
                  f"{best['batch']}). Batch 1, guidance 1.0: {ones or '—'}; batch 1 fp16 with "
                  f"guidance 7.5 (as the anchor): {cfg[0] if cfg else '—'} vs 1.59 s/image on the "
                  "A100."]
    return "\n".join(lines) + "\n"
