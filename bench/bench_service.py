"""Throughput of the generator service vs the in-process predictor (not a test).

(a) sequential: one client, one request at a time, through the service;
(b) concurrent: ``--clients`` clients at once, through the service (micro-batching);
(c) in-process: ``generator.generate`` on batches of ``--batch`` images, no HTTP.
Reports negatives/s, (b)/(c), (b)/(a), p50/p99 latency. The service runs as a separate
process (``python -m api``) on 127.0.0.1 with a fresh store, so nothing is served from cache.

    python bench/bench_service.py --rounds 3 --requests 16 --out bench/results/service.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.live_service import start_server  # noqa: E402
from shared.io import decode_image, decode_mask, encode_png  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default=None, help="checkpoint dir (default: embedded)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (a), (b), (c)")
    p.add_argument("--requests", type=int, default=16, help="per round: requests in (b), images in (c)")
    p.add_argument("--sequential", type=int, default=4, help="per round: requests in (a)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="service max_batch and (c) batch size")
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process")
    p.add_argument("--out", default=None, help="write the markdown section here")
    return p.parse_args(argv)


def make_pairs(n: int, size: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Smooth random images with an elliptic 'lesion', as PNG bytes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pairs = []
    for _ in range(n):
        image = ndimage.gaussian_filter(rng.random((size, size)), 3)
        image = (image - image.min()) / np.ptp(image)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        ry, rx = rng.integers(size // 12, size // 6, 2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image = np.clip(image * 0.6 + 0.35 * mask, 0, 1).astype(np.float32)
        pairs.append((encode_png(image), encode_png(mask)))
    return pairs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def _post(client: httpx.AsyncClient, pair, steps: int) -> float:
    t0 = time.perf_counter()
    r = await client.post(
        "/negatives", data={"steps": str(steps)}, headers={"Accept": "image/png"},
        files={"image": ("i.png", pair[0], "image/png"), "mask": ("m.png", pair[1], "image/png")},
    )
    r.raise_for_status()
    assert r.headers["x-cache"] == "miss"
    return time.perf_counter() - t0


async def run_clients(base: str, pairs, n_clients: int, steps: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue = asyncio.Queue()
    for pair in pairs:
        queue.put_nowait(pair)
    latencies: list[float] = []

    async def worker():
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            while not queue.empty():
                latencies.append(await _post(client, queue.get_nowait(), steps))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(n_clients)))
    return time.perf_counter() - t0, latencies


def load_in_process(args):
    import torch

    from generator.build import load_generator

    torch.set_num_threads(args.threads)
    return load_generator(args.generator, batch_size=args.batch)


def in_process(args, generator, pairs) -> float:
    decoded = [(decode_image(i), decode_mask(m)) for i, m in pairs]
    t0 = time.perf_counter()
    for start in range(0, len(decoded), args.batch):
        chunk = decoded[start : start + args.batch]
        generator.generate([c[0] for c in chunk], [c[1] for c in chunk], steps=args.steps)
    return time.perf_counter() - t0


def main(args: argparse.Namespace) -> str:
    """Rounds interleave (a), (b) and (c) so that a shared machine's load hits all three alike."""
    per_round = args.requests + args.sequential
    pairs = make_pairs(args.rounds * per_round + 1, args.size)
    generator = load_in_process(args)
    rows = {"a": [], "b": [], "c": []}  # per round: (count, seconds, latencies)
    with tempfile.TemporaryDirectory() as store:
        proc, base, _ = start_server(store, args.threads, max_batch=args.batch,
                                     max_wait_ms=args.max_wait_ms, generator=args.generator)
        try:
            asyncio.run(run_clients(base, [pairs[0]], 1, args.steps))  # warm-up
            in_process(args, generator, [pairs[0]])
            for r in range(args.rounds):
                chunk = pairs[1 + r * per_round : 1 + (r + 1) * per_round]
                seq, conc = chunk[: args.sequential], chunk[args.sequential :]
                t_a, lat_a = asyncio.run(run_clients(base, seq, 1, args.steps))
                t_b, lat_b = asyncio.run(run_clients(base, conc, args.clients, args.steps))
                # the same images as (b): the store is not involved in (c)
                t_c = in_process(args, generator, conc)
                rows["a"].append((len(seq), t_a, lat_a))
                rows["b"].append((len(conc), t_b, lat_b))
                rows["c"].append((len(conc), t_c, []))
                print(f"round {r}: a {len(seq) / t_a:.2f}/s  b {len(conc) / t_b:.2f}/s  "
                      f"c {len(conc) / t_c:.2f}/s", flush=True)
            metrics = httpx.get(f"{base}/metrics").text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rate = {k: [n / t for n, t, _ in v] for k, v in rows.items()}
    lat = {k: [x for _, _, ls in v for x in ls] for k, v in rows.items()}
    total = {k: (sum(n for n, _, _ in v), sum(t for _, t, _ in v)) for k, v in rows.items()}
    ratio_bc = float(np.median([b / c for b, c in zip(rate["b"], rate["c"], strict=True)]))
    ratio_ba = float(np.median([b / a for b, a in zip(rate["b"], rate["a"], strict=True)]))
    batch_sum = _metric(metrics, "neg_api_batch_size_sum")
    batch_count = max(_metric(metrics, "neg_api_batch_size_count"), 1.0)
    load = os.getloadavg()
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average {load[0]:.1f} at the end), no GPU; torch threads {args.threads} "
        f"(server and in-process). Generator: {args.generator or 'embedded default'}, "
        f"{args.steps} DDIM steps, {args.size}x{args.size} inputs, 1 sample per request, "
        f"max_batch {args.batch}, max_wait {args.max_wait_ms:g} ms; {args.rounds} interleaved "
        "rounds of (a), (b), (c).",
        "",
        f"Command: `python bench/bench_service.py --rounds {args.rounds} --requests {args.requests} "
        f"--sequential {args.sequential} --clients {args.clients} --batch {args.batch} "
        f"--max-wait-ms {args.max_wait_ms:g} --steps {args.steps} --size {args.size} "
        f"--threads {args.threads}" + (f" --generator {args.generator}" if args.generator else "")
        + "`",
        "",
        "| mode | negatives | seconds | negatives/s (all rounds) | per-round negatives/s | "
        "p50 latency s | p99 latency s |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"a": "(a) sequential, 1 client", "b": f"(b) {args.clients} concurrent clients",
             "c": f"(c) in-process, batch {args.batch}"}
    for k in "abc":
        n, t = total[k]
        p50 = f"{percentile(lat[k], 50):.3f}" if lat[k] else "-"
        p99 = f"{percentile(lat[k], 99):.3f}" if lat[k] else "-"
        per = ", ".join(f"{x:.2f}" for x in rate[k])
        lines.append(f"| {names[k]} | {n} | {t:.2f} | {n / t:.2f} | {per} | {p50} | {p99} |")
    lines += [
        "",
        f"(b)/(c) = **{ratio_bc:.2f}** (median of per-round ratios; goal >= 0.9); "
        f"(b)/(a) = **{ratio_ba:.2f}**; mean images per predictor call in the service: "
        f"{batch_sum / batch_count:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("## Generator service throughput\n\n" + text)
    return text


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


if __name__ == "__main__":
    main(parse_args())
