"""Benchmark: Stage 1 step (DHN-NCE + OT + prototype InfoNCE + attention entropy on the last 4
blocks) vs a plain DHN-NCE step, same model and batch; and our batched OT vs a per-pair POT loop.

Step times: both variants alternate step by step in one process (fair under a shared, busy
CPU). Step memory: parameters + gradients + AdamW state + tensors saved by autograd (see
:func:`step_memory`); each variant also runs in its own subprocess for its peak RSS.

    python bench/bench_stage1.py --out bench/results/stage1.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _batch(n: int, size: int, grid: tuple[int, int], seed: int):
    from finetune.patch_losses import patch_soft_mask

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = torch.randint(size // 4, 3 * size // 4, (2, n), generator=g)
    r = torch.randint(size // 10, size // 5, (n,), generator=g)
    masks = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
             <= r[:, None, None] ** 2)
    return images, patch_soft_mask(masks, grid)


def _make_step(variant: str, batch: int):
    """A model (seeded, identical for both variants) and a closure doing one optimiser step."""
    from finetune.attention import capture_attention
    from finetune.build import build_clip
    from finetune.losses import attention_entropy, dhn_nce, stage1
    from finetune.modeling.tokens import encode_image_tokens, patch_grid

    torch.manual_seed(0)
    model, _, tokenizer = build_clip("embedded")
    model.train()
    size = model.visual.image_size[0]
    images, soft = _batch(batch, size, patch_grid(model), seed=0)
    text = tokenizer(["A brain MRI showing a small, round hypointense brain tumor."] * batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    half = batch // 2
    last4 = [-4, -3, -2, -1]

    def loss_fn() -> torch.Tensor:
        if variant == "dhn":
            return dhn_nce(model.encode_image(images), model.encode_text(text))["loss"]
        with capture_attention(model, last4) as maps:
            image_emb, patches = encode_image_tokens(model, images)
        loss = dhn_nce(image_emb, model.encode_text(text))["loss"]
        loss = loss + stage1(patches[:half], patches[half:2 * half], soft[:half],
                             soft[half:2 * half], eps=0.1, n_iter=30)["loss"]
        return loss + 0.1 * attention_entropy(maps.probs, mode="hinge", h_min=0.3)["loss"]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    step.loss_fn, step.model, step.opt = loss_fn, model, opt
    return step


def step_memory(variant: str, batch: int) -> dict:
    """Bytes a training step holds at its peak (end of forward), counted exactly.

    = parameters + gradients + AdamW state (identical for both variants) + the tensors autograd
    saves for backward (deduplicated by storage, parameters excluded), captured with
    ``torch.autograd.graph.saved_tensors_hooks``. RSS cannot show this on CPU: it is dominated by
    ~1.1 GiB of loaded libraries and by allocator reuse.
    """
    step = _make_step(variant, batch)
    step()  # creates gradients and optimiser state
    model, opt = step.model, step.opt
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step.loss_fn()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    params = nbytes(model.parameters())
    grads = nbytes(p.grad for p in model.parameters() if p.grad is not None)
    state = nbytes(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    del loss
    return {"saved_mib": sum(seen.values()) / 2**20,
            "static_mib": (params + grads + state) / 2**20}


def run_variant(variant: str, batch: int, steps: int, threads: int) -> dict:
    """Peak RSS of ``steps`` optimiser steps of one variant (own process), and step memory."""
    torch.set_num_threads(threads)
    step = _make_step(variant, batch)
    for _ in range(steps):
        step()
    return {"variant": variant, "peak_rss_mib": _rss_mib(), **step_memory(variant, batch)}


def time_interleaved(batch: int, steps: int, threads: int) -> dict:
    """Median step time of both variants, alternating steps so both see the same machine load."""
    torch.set_num_threads(threads)
    steps_by = {v: _make_step(v, batch) for v in ("dhn", "stage1")}
    times: dict[str, list[float]] = {v: [] for v in steps_by}
    for v in steps_by:
        steps_by[v]()  # warm-up
    for _ in range(steps):
        for v, step in steps_by.items():
            t0 = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - t0)
    return {v: {"median_s": statistics.median(t), "min_s": min(t)} for v, t in times.items()}


def bench_ot(pairs: int, tokens: int, width: int, iters: int, repeats: int) -> dict:
    """Forward+backward of the debiased divergence: ours, POT batched, per-pair ot.sinkhorn2."""
    import ot

    from finetune.ot import pairwise_cost, sinkhorn_divergence

    g = torch.Generator().manual_seed(0)
    x = torch.randn(pairs, tokens, width, generator=g)
    y = torch.randn(pairs, tokens, width, generator=g)
    a = torch.rand(pairs, tokens, generator=g) + 0.01
    b = torch.rand(pairs, tokens, generator=g) + 0.01

    def timed(fn, repeats: int = repeats, warmup: bool = True) -> float:
        if warmup:
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def ours(solver: str):
        def fn():
            xg = x.clone().requires_grad_(True)
            sinkhorn_divergence(xg, y, a, b, eps=0.1, n_iter=iters, solver=solver).sum().backward()
        return fn

    def pot_loop(**kw):
        def fn():
            xg = x.clone().requires_grad_(True)
            an, bn = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
            total = 0.0
            for i in range(pairs):  # the same three problems per pair, one call each
                for u, v, p, q, w in ((xg[i], y[i], an[i], bn[i], 1.0),
                                      (xg[i], xg[i], an[i], an[i], -0.5),
                                      (y[i], y[i], bn[i], bn[i], -0.5)):
                    c = pairwise_cost(u[None], v[None])[0]
                    total = total + w * ot.sinkhorn2(p, q, c, 0.1, **kw)
            total.backward()
        return fn

    return {
        "shape": f"{pairs} pairs x {tokens}x{tokens} tokens, width {width}",
        "ours_batched_s": timed(ours("ours")),
        "pot_batched_s": timed(ours("pot")),
        "pot_loop_same_iters_s": timed(pot_loop(method="sinkhorn_log", numItermax=iters,
                                                stopThr=0.0)),
        "pot_loop_defaults_s": timed(pot_loop(), repeats=1, warmup=False),
        "iters": iters,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stage1.md")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=["dhn", "stage1"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:  # child process
        print(json.dumps(run_variant(args.variant, args.batch, args.steps, args.threads)))
        return
    torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = {}
    for variant in ("dhn", "stage1"):
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch),
               "--steps", "3", "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    for variant, timing in time_interleaved(args.batch, args.steps, args.threads).items():
        results[variant].update(timing)
    ot_small = bench_ot(8, 64, 128, iters=30, repeats=5)
    ot_vitb = bench_ot(8, 196, 768, iters=30, repeats=3)
    write_report(args, results, [ot_small, ot_vitb])


def write_report(args, results: dict, ot_rows: list[dict]) -> None:
    dhn, st1 = results["dhn"], results["stage1"]
    t_ratio = st1["median_s"] / dhn["median_s"]
    m_dhn = dhn["static_mib"] + dhn["saved_mib"]
    m_st1 = st1["static_mib"] + st1["saved_mib"]
    m_ratio = m_st1 / m_dhn
    lines = [
        "## Stage 1 fine-tuning cost (issue 6)",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs "
        f"(shared with other jobs; 1-min load average at the end {os.getloadavg()[0]:.1f}), "
        f"torch {torch.__version__}, {args.threads} thread(s), CPU only. "
        f"Command: `python bench/bench_stage1.py --batch {args.batch} --steps {args.steps} "
        f"--threads {args.threads}`.",
        "",
        f"Model: embedded BiomedCLIP-family CLIP (ViT 128²/16, width 128, depth 6; BERT 3 layers), "
        f"random init, AdamW step, batch {args.batch} images + captions. Stage 1 step = DHN-NCE "
        f"(image–text term kept) + debiased Sinkhorn (ε 0.1, 30 it, our batched solver) + "
        f"prototype InfoNCE on {args.batch // 2} positive pairs + hinge attention entropy on the "
        f"last 4 blocks (captured, non-fused attention). Time: median of {args.steps} steps after a "
        "warm-up, the two variants alternating step by step in one process (the machine is "
        "shared, so both see the same load). Step memory: parameters + gradients + AdamW state "
        "+ tensors saved by autograd for backward at the end of the forward (deduplicated by "
        "storage; counted with `saved_tensors_hooks`) — the peak a step holds. Peak RSS of "
        "each variant's own process (3 steps) is listed too, but on CPU it is dominated by "
        "~1.1 GiB of loaded libraries and allocator reuse, so it cannot resolve the difference.",
        "",
        "| step | median s | min s | saved activations MiB | params+grads+Adam MiB | "
        "step memory MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
        f"| DHN-NCE | {dhn['median_s']:.3f} | {dhn['min_s']:.3f} | {dhn['saved_mib']:.1f} | "
        f"{dhn['static_mib']:.1f} | {m_dhn:.1f} | {dhn['peak_rss_mib']:.0f} |",
        f"| Stage 1 (DHN + OT + InfoNCE + entropy ×4 blocks) | {st1['median_s']:.3f} | "
        f"{st1['min_s']:.3f} | {st1['saved_mib']:.1f} | {st1['static_mib']:.1f} | {m_st1:.1f} | "
        f"{st1['peak_rss_mib']:.0f} |",
        f"| **ratio** | **{t_ratio:.3f}×** | | **{st1['saved_mib'] / dhn['saved_mib']:.3f}×** | | "
        f"**{m_ratio:.3f}×** | |",
        "",
        f"Goal ≤ 1.3× time and ≤ 1.3× memory: time {'met' if t_ratio <= 1.3 else 'MISSED'}, "
        f"memory {'met' if m_ratio <= 1.3 else 'MISSED'}.",
        "",
        "### OT solver: debiased divergence forward + backward (3 OT problems per pair)",
        "",
        "| problem | ours (batched log-Sinkhorn) s | POT ot.batch s | POT ot.sinkhorn2 loop, same "
        "iterations s | POT ot.sinkhorn2 loop, defaults s |",
        "|---|---|---|---|---|",
    ]
    for r in ot_rows:
        lines.append(f"| {r['shape']}, {r['iters']} it | {r['ours_batched_s']:.4f} | "
                     f"{r['pot_batched_s']:.4f} | {r['pot_loop_same_iters_s']:.4f} | "
                     f"{r['pot_loop_defaults_s']:.4f} |")
    lines += ["", "POT loop with defaults = `ot.sinkhorn2(a, b, M, reg)` (method 'sinkhorn', up to "
              "1000 iterations, stopThr 1e-9), gradient by autograd through POT's torch backend.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
