"""Fixtures for the service tests: toy image/mask pairs, the fake generator, app clients."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.main import create_app
from api.service import build_generator
from api.settings import Settings
from shared.io import encode_png
from tests.api.fakes import FakeGenerator

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_pair(seed: int = 0, size: tuple[int, int] = (32, 32)) -> tuple[bytes, bytes]:
    """A smooth random image with a disc 'lesion', as PNG bytes (image, mask)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) // 6) ** 2
    image = np.clip(0.4 + 0.2 * rng.standard_normal((h, w)) * 0.3 + 0.3 * mask, 0, 1)
    return encode_png(image.astype(np.float32)), encode_png(mask)


def post_pair(client, image: bytes, mask: bytes, *, accept: str | None = None, **fields):
    headers = {"Accept": accept} if accept else {}
    return client.post(
        "/negatives",
        files={"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
        data={k: str(v) for k, v in fields.items()},
        headers=headers,
    )


def wait_ready(client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise TimeoutError("service not ready")


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def settings_factory(tmp_path) -> Callable[..., Settings]:
    def factory(**overrides) -> Settings:
        base = {"store_dir": tmp_path / "store", "max_wait_ms": 5.0}
        return Settings(**{**base, **overrides})

    return factory


@pytest.fixture
def client_factory(settings_factory, fake):
    """``with client_factory(**settings) as client`` -> a ready TestClient on the fake."""

    @contextmanager
    def factory(generator=None, **overrides) -> Iterator[TestClient]:
        app = create_app(settings_factory(**overrides))
        gen = fake if generator is None else generator
        app.dependency_overrides[build_generator] = lambda settings: gen
        with TestClient(app) as client:
            wait_ready(client)
            yield client

    return factory


@pytest.fixture
def client(client_factory) -> Iterator[TestClient]:
    with client_factory() as c:
        yield c


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
