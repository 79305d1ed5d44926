"""A real ``python -m api`` on 127.0.0.1 for the bench scripts (bench_service, bench_attack)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: str, threads: int, port: int | None = None, **settings):
    """Start the service on ``port`` (a free one by default) with ``NEG_API_<KEY>=value`` for each
    of ``settings`` (None values left out); wait for /readyz. Returns ``(process, base_url, port)``."""
    port = port or free_port()
    env = {**os.environ, "NEG_API_HOST": "127.0.0.1", "NEG_API_PORT": str(port),
           "NEG_API_STORE_DIR": store, "NEG_API_TORCH_THREADS": str(threads),
           "NEG_API_ACCESS_LOG": "false", "OMP_NUM_THREADS": str(threads),
           **{f"NEG_API_{k.upper()}": str(v) for k, v in settings.items() if v is not None}}
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return proc, base, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("service did not become ready")
