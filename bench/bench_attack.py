"""The service under attack, rerun after the hardening of issue 20 (not a test; results in a file).

Against a real ``python -m api`` (embedded generator, fresh store, 127.0.0.1), in this order:

1. fuzz: schemathesis over every operation of ``/openapi.json`` (``--fuzz-cases`` in all);
2. malformed sweep: hand-made bad requests (empty/corrupt/NaN files, size mismatch, non-binary
   and colour masks, bad fields, duplicates, oversized bodies with and without Content-Length);
3. poison in a batch: 6 valid requests and one NaN TIFF at once;
4. cost budget: a 1000² image with a 200² mask, biharmonic, dilation 64;
5. load: ``--clients`` x ``--per-client`` requests (distinct seeds) while /healthz is probed
   every 50 ms; seeds-only vs images-only batches (throughput ratio);
6. kill -9 mid-batch, restart on the same store: start-up sweep, every entry readable or absent.

Counts 5xx answers, lost requests (no answer), poisoned neighbours, health latency, store bytes
vs disk bytes, and the server's peak RSS.

    python bench/bench_attack.py --out bench/results/attack.md
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.live_service import start_server  # noqa: E402
from shared.io import encode_png  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fuzz-cases", type=int, default=500)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=25)
    p.add_argument("--steps", type=int, default=4, help="sampler steps of the load requests")
    p.add_argument("--size", type=int, default=64, help="image side of the load requests")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ server
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set size
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------ inputs
def pair(size: int, seed: int) -> tuple[bytes, bytes]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random((size, size)), 2)
    image = (image - image.min()) / np.ptp(image)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2 + seed % 5) ** 2 <= (size / 7) ** 2
    return encode_png((0.6 * image + 0.35 * mask).astype(np.float32)), encode_png(mask)


def nan_tiff(size: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(0).random((size, size)).astype(np.float32)
    arr[size // 2, size // 2] = np.nan
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def files(image: bytes, mask: bytes, itype: str = "image/png") -> dict:
    return {"image": ("i", image, itype), "mask": ("m.png", mask, "image/png")}


def malformed(size: int) -> list[tuple[str, dict]]:
    """(name, httpx.post kwargs) of bad requests; each must get a 4xx JSON error."""
    img, mask = pair(size, 0)
    small_img, _ = pair(size // 2, 0)
    gray = encode_png(np.full((size, size), 0.5, np.float32))
    colour = encode_png(np.dstack([np.ones((size, size)), np.zeros((size, size)),
                                   np.zeros((size, size))]).astype(np.float32))
    header_bomb = encode_png(np.zeros((1, 1), np.float32))[:16] + (50000).to_bytes(4, "big") * 2
    cases = [
        ("json body", {"json": {"a": 1}}),
        ("no files", {"data": {"steps": "3"}, "files": {"x": ("x", b"1", "text/plain")}}),
        ("empty image", {"files": files(b"", mask)}),
        ("text as image", {"files": files(b"hello", mask, "text/plain")}),
        ("corrupt png", {"files": files(img[:50], mask)}),
        ("truncated header bomb", {"files": files(header_bomb, mask)}),
        ("NaN float TIFF", {"files": files(nan_tiff(size), mask, "image/tiff")}),
        ("size mismatch", {"files": files(small_img, mask)}),
        ("non-binary mask", {"files": files(img, gray)}),
        ("colour mask", {"files": files(img, colour)}),
        ("empty mask", {"files": files(img, encode_png(np.zeros((size, size), bool)))}),
        ("mask as text field", {"files": {"image": ("i.png", img, "image/png")},
                                "data": {"mask": "abc"}}),
        ("unknown field", {"files": files(img, mask), "data": {"colour": "red"}}),
        ("steps 0", {"files": files(img, mask), "data": {"steps": "0"}}),
        ("steps text", {"files": files(img, mask), "data": {"steps": "many"}}),
        ("num_samples 99", {"files": files(img, mask), "data": {"num_samples": "99"}}),
        ("strength nan", {"files": files(img, mask), "data": {"strength": "nan"}}),
        ("dilation 1e9", {"files": files(img, mask), "data": {"dilation_px": "1000000000"}}),
        ("seed negative", {"files": files(img, mask), "data": {"seed": "-1"}}),
        ("method unknown", {"files": files(img, mask), "data": {"method": "magic"}}),
        ("method injection", {"files": files(img, mask), "data": {"method": "../../etc"}}),
        ("format bad", {"files": files(img, mask), "data": {"format": "gif"}}),
        ("accept bad", {"files": files(img, mask), "headers": {"Accept": "text/csv"}}),
        ("see_through on biharmonic", {"files": files(img, mask),
                                       "data": {"see_through_px": "1", "method": "biharmonic"}}),
        ("body over limit", {"files": files(os.urandom(17 * 1024**2), mask)}),
    ]
    return cases


# ------------------------------------------------------------------------------------ phases
def phase_fuzz(base: str, n_cases: int) -> dict:
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import HealthCheck
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", wait_for_schema=10)
    ops = [r.ok() for r in schema.get_all_operations()]
    per_op = max(1, n_cases // max(1, len(ops))) * 2
    total, failures = 0, []
    session = requests.Session()
    def fuzzer(op):
        @hypothesis.settings(max_examples=per_op, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck), derandomize=True)
        @hypothesis.given(case=op.as_strategy())
        def fuzz(case):
            nonlocal total
            total += 1
            try:
                case.call_and_validate(base_url=base, session=session,
                                       checks=[not_a_server_error], timeout=60)
            except Exception as err:  # noqa: BLE001 - counted, reported
                failures.append(f"{op.path}: {str(err)[:120]}")

        return fuzz

    for op in ops:
        fuzzer(op)()
    return {"cases": total, "server_errors": len(failures), "examples": failures[:3]}


def phase_malformed(base: str, size: int) -> dict:
    rows, bad = [], 0
    with httpx.Client(base_url=base, timeout=60) as c:
        for name, kwargs in malformed(size):
            r = c.post("/negatives", **kwargs)
            ok = 400 <= r.status_code < 500 and set(r.json()) == {"error", "detail"}
            bad += not ok
            rows.append((name, r.status_code, r.json().get("error", "?")))
        # chunked body (no Content-Length) far over the limit: refused while it streams
        sent = [0]

        def chunks():
            head = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n'
                    b"Content-Type: image/png\r\n\r\n")
            yield head
            for _ in range(1024):  # 64 MiB in 64 KiB chunks
                sent[0] += 1
                yield b"\0" * 65536

        t0 = time.perf_counter()
        try:
            r = c.post("/negatives", content=chunks(),
                       headers={"content-type": "multipart/form-data; boundary=b"})
            status = r.status_code
        except httpx.HTTPError as err:  # the server may close before the client finishes
            status = f"closed ({type(err).__name__})"
        rows.append((f"chunked 64 MiB, no Content-Length (answered in {time.perf_counter() - t0:.1f} "
                     f"s; the client pushed {sent[0] * 64 // 1024} MiB into the socket)", status,
                     "payload_too_large"))
        bad += status != 413 and not str(status).startswith("closed")
    return {"rows": rows, "not_4xx_json": bad}


async def phase_poison(base: str, size: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=300) as c:
        reqs = [c.post("/negatives", files=files(*pair(size, 100 + i)), data={"steps": "3"})
                for i in range(6)]
        reqs.insert(3, c.post("/negatives", files=files(nan_tiff(size), pair(size, 0)[1],
                                                        "image/tiff"), data={"steps": "3"}))
        out = await asyncio.gather(*reqs)
    codes = [r.status_code for r in out]
    return {"codes": codes, "poisoned_neighbours": sum(c != 200 for i, c in enumerate(codes) if i != 3)}


def phase_budget(base: str) -> list[dict]:
    """The issue's request (one sample), and the same with 8 samples (over the fill budget)."""
    n = 1000
    image = encode_png(np.random.default_rng(0).random((n, n)).astype(np.float32))
    mask = np.zeros((n, n), bool)
    mask[400:600, 400:600] = True
    out = []
    for samples in (1, 8):
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/negatives", files=files(image, encode_png(mask)),
                       data={"method": "biharmonic", "dilation_px": "64", "num_samples": str(samples),
                             "format": "json"}, timeout=120)
        body = r.json()
        out.append({"samples": samples, "status": r.status_code, "seconds": time.perf_counter() - t0,
                    "error": body.get("error", "-"), "detail": body.get("detail", "-")})
    return out


async def phase_load(base: str, clients: int, per_client: int, steps: int, size: int) -> dict:
    codes: list[int] = []
    lost = 0
    health: list[float] = []
    done = threading.Event()

    def prober():  # its own thread and connection: the clients' work never delays a probe
        with httpx.Client(base_url=base, timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                health.append(time.perf_counter() - t0)
                time.sleep(0.05)

    async def client(k: int):
        nonlocal lost
        async with httpx.AsyncClient(base_url=base, timeout=600) as c:
            for j in range(per_client):
                img, mask = pair(size, 1000 + k * per_client + j)
                try:
                    r = await c.post("/negatives", files=files(img, mask),
                                     data={"steps": str(steps), "seed": str(k * 1000 + j)})
                    codes.append(r.status_code)
                except httpx.HTTPError:
                    lost += 1

    probe = threading.Thread(target=prober, daemon=True)
    probe.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    seconds = time.perf_counter() - t0
    done.set()
    probe.join()
    return {"requests": clients * per_client, "ok": codes.count(200),
            "server_errors": sum(c >= 500 for c in codes), "other": sorted(set(codes) - {200}),
            "lost": lost, "seconds": seconds, "req_per_s": len(codes) / seconds,
            "health_p50_ms": 1e3 * float(np.percentile(health, 50)),
            "health_p99_ms": 1e3 * float(np.percentile(health, 99)),
            "health_max_ms": 1e3 * max(health), "health_n": len(health)}


async def phase_seed_batching(base: str, n: int, steps: int, size: int) -> dict:
    """n concurrent requests: the same image with n seeds vs n images with one seed."""
    async def burst(kind: str) -> float:
        async with httpx.AsyncClient(base_url=base, timeout=600) as c:
            if kind == "seeds":
                img, mask = pair(size, 5000 + steps)
                reqs = [c.post("/negatives", files=files(img, mask),
                               data={"steps": str(steps), "seed": str(9000 + i)}) for i in range(n)]
            else:
                reqs = [c.post("/negatives", files=files(*pair(size, 6000 + i + 100 * steps)),
                               data={"steps": str(steps), "seed": "7"}) for i in range(n)]
            t0 = time.perf_counter()
            out = await asyncio.gather(*reqs)
            assert all(r.status_code == 200 for r in out), [r.status_code for r in out]
            return n / (time.perf_counter() - t0)

    seeds, images = await burst("seeds"), await burst("images")
    return {"seeds_req_per_s": seeds, "images_req_per_s": images, "ratio": seeds / images}


def store_bytes(store: Path) -> tuple[int, int, int]:
    """(files, bytes on disk, leftover .tmp files)."""
    paths = [p for p in store.rglob("*") if p.is_file()]
    return len(paths), sum(p.stat().st_size for p in paths), sum(p.suffix == ".tmp" for p in paths)


def phase_kill(store: Path, threads: int, size: int) -> dict:
    proc, base, port = start_server(str(store), threads, max_batch=8)
    ids: list[str] = []

    async def fire():
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            async def one(i):
                try:
                    r = await c.post("/negatives", files=files(*pair(size, 7000 + i)),
                                     data={"steps": "8", "num_samples": "2"})
                    if r.status_code == 200:
                        ids.extend(r.json()["ids"])
                except httpx.HTTPError:
                    pass
            tasks = [asyncio.create_task(one(i)) for i in range(24)]
            await asyncio.sleep(4.0)  # some batches done, one running
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(fire())
    proc.wait()
    before = store_bytes(store)
    # leftovers as a kill between the two writes of an entry leaves them
    folder = store / "ab"
    folder.mkdir(exist_ok=True)
    (folder / f"{'ab' * 32}.png").write_bytes(b"\x89PNG half")
    (folder / f".{'ab' * 32}.json.x.tmp").write_bytes(b"{")
    proc, base, _ = start_server(str(store), threads, port=port)
    try:
        codes = [httpx.get(f"{base}/negatives/{i}").status_code for i in ids]
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        proc.terminate()
        proc.wait()
    after = store_bytes(store)
    return {"ids_answered_before_kill": len(ids), "get_codes": sorted(set(codes)),
            "server_errors": sum(c >= 500 for c in codes), "files_before": before[0],
            "tmp_before": before[2], "files_after": after[0], "tmp_after": after[2],
            "bytes_after": after[1], "restart_ok": "neg_api" in metrics}


# ------------------------------------------------------------------------------------ report
def main(args: argparse.Namespace) -> str:
    lines = ["## The service under attack (issue 20 rerun)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, no GPU; "
             f"server torch threads {args.threads}; embedded generator; store in a fresh temp dir.",
             "", f"Command: `python bench/bench_attack.py --fuzz-cases {args.fuzz_cases} --clients "
             f"{args.clients} --per-client {args.per_client} --steps {args.steps} --size {args.size}`",
             ""]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        proc, base, _ = start_server(str(store), args.threads, max_batch=8, queue_size=64)
        try:
            t = time.perf_counter()
            fuzz = phase_fuzz(base, args.fuzz_cases)
            lines += [f"1. **Fuzz** (schemathesis, every operation): {fuzz['cases']} cases, "
                      f"{fuzz['server_errors']} server errors "
                      f"({time.perf_counter() - t:.0f} s){' ' + str(fuzz['examples']) if fuzz['examples'] else ''}."]
            mal = phase_malformed(base, args.size)
            lines += [f"2. **Malformed sweep**: {len(mal['rows'])} requests, "
                      f"{mal['not_4xx_json']} not answered with a 4xx JSON error.", "",
                      "   | request | status | error |", "   |---|---|---|"]
            lines += [f"   | {n} | {s} | {e} |" for n, s, e in mal["rows"]]
            poison = asyncio.run(phase_poison(base, args.size))
            lines += ["", f"3. **Poison in a batch** (6 valid + 1 NaN TIFF at once): statuses "
                      f"{poison['codes']}; poisoned neighbours: {poison['poisoned_neighbours']}."]
            lines += ["4. **Cost budget** (1000² image, 200² mask, biharmonic, dilation 64; issue "
                      "20: 13.8 s of the worker before): " + "; ".join(
                          f"{b['samples']} sample(s): {b['status']} in {b['seconds']:.2f} s"
                          + (f" `{b['error']}` \"{b['detail']}\"" if b["status"] != 200 else "")
                          for b in phase_budget(base)) + "."]
            load = asyncio.run(phase_load(base, args.clients, args.per_client, args.steps,
                                          args.size))
            lines += [f"5. **Load** ({args.clients} clients x {args.per_client} requests, "
                      f"{args.size}², {args.steps} steps, distinct seeds): {load['ok']}/"
                      f"{load['requests']} answered 200, {load['server_errors']} 5xx, "
                      f"{load['lost']} lost, {load['req_per_s']:.2f} requests/s. /healthz during the "
                      f"load ({load['health_n']} probes): p50 {load['health_p50_ms']:.1f} ms, p99 "
                      f"{load['health_p99_ms']:.1f} ms, max {load['health_max_ms']:.1f} ms."]
            sb = asyncio.run(phase_seed_batching(base, 8, args.steps, args.size))
            lines += [f"   Batching across seeds (8 concurrent requests): same image with 8 seeds "
                      f"{sb['seeds_req_per_s']:.2f} requests/s vs 8 images with one seed "
                      f"{sb['images_req_per_s']:.2f} requests/s (ratio {sb['ratio']:.2f}; before "
                      f"issue 20 the seed split batches: 8.4 vs 12.1)."]
            lines += [f"   Server peak RSS after phases 1-5: {rss_mb(proc.pid):.0f} MB."]
        finally:
            proc.terminate()
            proc.wait()
        kill = phase_kill(Path(tmp) / "store_kill", args.threads, args.size)
        lines += [f"6. **kill -9 mid-batch, restart on the same store**: {kill['ids_answered_before_kill']} "
                  f"ids answered before the kill; after restart GET of each: statuses "
                  f"{kill['get_codes']} ({kill['server_errors']} 5xx); store files "
                  f"{kill['files_before']} ({kill['tmp_before']} .tmp) before restart plus 2 planted "
                  f"leftovers -> {kill['files_after']} ({kill['tmp_after']} .tmp) after, "
                  f"{kill['bytes_after']} bytes; metrics answer after restart: {kill['restart_ok']}."]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main(parse_args())
