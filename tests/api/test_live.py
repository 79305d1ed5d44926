"""A real uvicorn on 127.0.0.1 (free port): the trainer client under load, disconnects."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np

from api.main import create_app
from api.service import build_generator
from shared.io import decode_image, decode_mask
from shared.negatives_client import NegativesClient
from tests.api.conftest import live_server, make_pair, post_pair
from tests.api.fakes import FakeGenerator, fake_fill


def _app(settings, gen):
    app = create_app(settings)
    app.dependency_overrides[build_generator] = lambda s: gen
    return app


def test_live_load_8_clients_x_25_requests(settings_factory, tmp_path):
    """200 requests from 8 concurrent clients: none lost, none mixed up, batches formed."""
    gen = FakeGenerator(delay_s=0.005)
    app = _app(settings_factory(max_batch=8, max_wait_ms=5, queue_size=64), gen)
    pairs = [make_pair(1000 + i, size=(24, 24)) for i in range(200)]

    async def one_client(base: str, chunk: list[int], cache) -> list[tuple[int, list]]:
        async with NegativesClient(base, max_concurrency=1, cache_dir=cache) as client:
            return [(i, await client.generate(*pairs[i], seed=i % 5, dilation_px=1))
                    for i in chunk]

    async def run(base: str):
        chunks = [list(range(c * 25, (c + 1) * 25)) for c in range(8)]
        return await asyncio.gather(*(one_client(base, ch, tmp_path / f"cache{n}")
                                      for n, ch in enumerate(chunks)))

    with live_server(app) as base:
        start = time.perf_counter()
        results = asyncio.run(run(base))
        elapsed = time.perf_counter() - start
        metrics = httpx.get(f"{base}/metrics").text
    answered = [item for client_results in results for item in client_results]
    assert sorted(i for i, _ in answered) == list(range(200))  # none lost
    for i, negatives in answered:  # none mismatched: each is the fill of its own input
        assert len(negatives) == 1
        image, mask = decode_image(pairs[i][0]), decode_mask(pairs[i][1])
        want = fake_fill(image, mask, seed=i % 5, dilation_px=1)
        np.testing.assert_allclose(negatives[0].image, want, atol=0.5 / 255)
    assert gen.generated_images == 200
    assert max(c["batch"] for c in gen.calls) > 1, "8 concurrent clients never shared a batch"
    assert 'neg_api_requests_total{method="POST",route="/negatives",status="200"} 200.0' in metrics
    assert elapsed < 60


def test_client_disconnect_cancels_queued_work(settings_factory):
    gate = threading.Event()
    gen = FakeGenerator(gate=gate)
    app = _app(settings_factory(max_batch=1, max_wait_ms=0), gen)
    held, dropped = make_pair(1), make_pair(2)
    with live_server(app) as base:
        with httpx.Client(base_url=base, timeout=30) as c:
            worker = threading.Thread(target=post_pair, args=(c, *held))
            worker.start()
            assert gen.started.wait(5)
            try:  # this client gives up while its request waits in the queue
                with httpx.Client(base_url=base, timeout=0.5) as impatient:
                    post_pair(impatient, *dropped)
                raise AssertionError("expected a client timeout")
            except httpx.ReadTimeout:
                pass
            deadline = time.monotonic() + 5
            while "neg_api_cancelled_total 1.0" not in c.get("/metrics").text:
                assert time.monotonic() < deadline, "disconnect never noticed"
                time.sleep(0.05)
            gate.set()
            worker.join(10)
            time.sleep(0.2)
    assert gen.generated_images == 1  # the dropped request never reached the predictor


def test_client_cache_skips_requests(settings_factory, tmp_path):
    gen = FakeGenerator()
    app = _app(settings_factory(), gen)
    image, mask = make_pair(3)

    async def run(base):
        async with NegativesClient(base, cache_dir=tmp_path / "cache") as client:
            first = await client.generate(image, mask, num_samples=2, strength=1)
            second = await client.generate(image, mask, num_samples=2, strength=1.0)
            return first, second, client.requests_sent

    with live_server(app) as base:
        first, second, sent = asyncio.run(run(base))
    assert sent == 1 and len(gen.calls) == 1
    assert [n.id for n in first] == [n.id for n in second]
    assert not first[0].from_cache and second[0].from_cache
    assert second[1].png == first[1].png
