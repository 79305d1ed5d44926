"""Run the generator service as a child process on 127.0.0.1 for the length of a ``with`` block.

The demo talks to the service only over HTTP, exactly as the trainer does on a GPU host, so
nothing here imports ``api``: the service is started with ``python -m api`` and configured
through its ``NEG_API_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


class ServiceStartError(RuntimeError):
    """The service process exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def generator_service(
    *, store_dir: Path, log_path: Path, threads: int = 1, timeout_s: float = 180.0,
    generator: str | None = None,
) -> Iterator[str]:
    """Start ``python -m api`` on a free loopback port; yield its base URL; stop it on exit."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "NEG_API_HOST": "127.0.0.1", "NEG_API_PORT": str(port),
        "NEG_API_STORE_DIR": str(store_dir), "NEG_API_TORCH_THREADS": str(threads),
        "NEG_API_ACCESS_LOG": "false", "OMP_NUM_THREADS": str(threads),
    })
    if generator:
        env["NEG_API_GENERATOR"] = generator
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise ServiceStartError(
                        f"generator service exited with code {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ServiceStartError(f"service not ready after {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
