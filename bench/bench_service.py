"""Throughput of the generator service vs the in-process predictor (not a test).

(a) sequential: one client, one request at a time, through the service;
(b) concurrent: ``--clients`` clients at once, through the service (micro-batching);
(c) in-process: ``generator.generate`` on batches of ``--batch`` images, no HTTP.
Reports negatives/s, (b)/(c), (b)/(a), p50/p99 latency. The service runs as a separate
process (``python -m api``) on 127.0.0.1 with a fresh store, so nothing is served from cache.

    python bench/bench_service.py --requests 48 --steps 20 --out bench/results/service.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.io import decode_image, decode_mask, encode_png  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default=None, help="checkpoint dir (default: embedded)")
    p.add_argument("--requests", type=int, default=48, help="requests in (b) and images in (c)")
    p.add_argument("--sequential", type=int, default=16, help="requests in (a)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="service max_batch and (c) batch size")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
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


def start_server(args, store: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NEG_API_HOST": "127.0.0.1", "NEG_API_PORT": str(port),
           "NEG_API_STORE_DIR": store, "NEG_API_MAX_BATCH": str(args.batch),
           "NEG_API_MAX_WAIT_MS": str(args.max_wait_ms), "NEG_API_TORCH_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads)}
    if args.generator:
        env["NEG_API_GENERATOR"] = str(args.generator)
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("service did not become ready")


def in_process(args, pairs) -> float:
    import torch

    from generator.build import load_generator

    torch.set_num_threads(args.threads)
    generator = load_generator(args.generator, batch_size=args.batch)
    decoded = [(decode_image(i), decode_mask(m)) for i, m in pairs]
    generator.generate([decoded[0][0]], [decoded[0][1]], steps=args.steps)  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(decoded), args.batch):
        chunk = decoded[start : start + args.batch]
        generator.generate([c[0] for c in chunk], [c[1] for c in chunk], steps=args.steps)
    return time.perf_counter() - t0


def main(args: argparse.Namespace) -> str:
    pairs = make_pairs(args.requests + args.sequential + 1, args.size)
    warm, seq_pairs, conc_pairs = pairs[0], pairs[1 : 1 + args.sequential], pairs[1 + args.sequential :]
    with tempfile.TemporaryDirectory() as store:
        proc, base = start_server(args, store)
        try:
            asyncio.run(run_clients(base, [warm], 1, args.steps))  # warm-up
            t_a, lat_a = asyncio.run(run_clients(base, seq_pairs, 1, args.steps))
            t_b, lat_b = asyncio.run(run_clients(base, conc_pairs, args.clients, args.steps))
            metrics = httpx.get(f"{base}/metrics").text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    t_c = in_process(args, conc_pairs)
    rate_a, rate_b = len(seq_pairs) / t_a, len(conc_pairs) / t_b
    rate_c = len(conc_pairs) / t_c
    batch_line = next((ln for ln in metrics.splitlines() if ln.startswith("neg_api_batch_size_sum")), "")
    count_line = next((ln for ln in metrics.splitlines() if ln.startswith("neg_api_batch_size_count")), "")
    mean_batch = float(batch_line.split()[-1]) / max(float(count_line.split()[-1]), 1.0)
    load = os.getloadavg()
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared; load average {load[0]:.1f} at the end), no GPU; torch threads {args.threads} "
        f"(server and in-process). Generator: {args.generator or 'embedded default'}, "
        f"{args.steps} DDIM steps, {args.size}x{args.size} inputs, 1 sample per request, "
        f"max_batch {args.batch}, max_wait {args.max_wait_ms:g} ms.",
        "",
        f"Command: `python bench/bench_service.py --requests {args.requests} "
        f"--sequential {args.sequential} --clients {args.clients} --batch {args.batch} "
        f"--steps {args.steps} --size {args.size} --threads {args.threads}`",
        "",
        "| mode | negatives | seconds | negatives/s | p50 latency s | p99 latency s |",
        "|---|---|---|---|---|---|",
        f"| (a) sequential, 1 client | {len(seq_pairs)} | {t_a:.2f} | {rate_a:.2f} | "
        f"{percentile(lat_a, 50):.3f} | {percentile(lat_a, 99):.3f} |",
        f"| (b) {args.clients} concurrent clients | {len(conc_pairs)} | {t_b:.2f} | {rate_b:.2f} | "
        f"{percentile(lat_b, 50):.3f} | {percentile(lat_b, 99):.3f} |",
        f"| (c) in-process, batch {args.batch} | {len(conc_pairs)} | {t_c:.2f} | {rate_c:.2f} | - | - |",
        "",
        f"(b)/(c) = **{rate_b / rate_c:.2f}** (goal >= 0.9); (b)/(a) = **{rate_b / rate_a:.2f}**; "
        f"mean service batch in (b) and warm-up: {mean_batch:.2f} images.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("## Generator service throughput\n\n" + text)
    return text


if __name__ == "__main__":
    main(parse_args())
