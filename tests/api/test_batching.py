"""The micro-batcher: grouping by compatibility, batch cap, cancellation, failures."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from api.batching import MicroBatcher, QueueFullError


def echo_batch(calls):
    def run(images, masks, kwargs):
        calls.append((len(images), dict(kwargs)))
        seeds = kwargs["seed"]  # one per image (batching.PER_IMAGE_KWARGS)
        assert isinstance(seeds, list) and len(seeds) == len(images)
        return [[float(img.sum()) + s] for img, s in zip(images, seeds, strict=True)]

    return run


def test_groups_compatible_requests_and_caps_batch_size():
    calls = []

    async def main():
        batcher = MicroBatcher(echo_batch(calls), max_batch=3, max_wait_s=0.05, queue_size=32)
        batcher.start()
        jobs = []
        for n in range(7):
            shape = (4, 4) if n % 2 == 0 else (5, 5)
            image = np.full(shape, float(n), np.float32)
            jobs.append(batcher.submit(image, np.ones(shape, bool), {"seed": 0, "steps": 5}))
        results = await asyncio.gather(*jobs)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    for n, (samples, timing) in enumerate(results):
        size = 16 if n % 2 == 0 else 25
        assert samples == [float(n * size)]  # each caller gets its own image's result
        assert 1 <= timing.batch_size <= 3
    assert sum(n for n, _ in calls) == 7 and max(n for n, _ in calls) == 3
    assert len(calls) <= 4  # 4 images of 4x4 -> 3+1, 3 images of 5x5 -> 3


def test_different_parameters_never_share_a_call():
    calls = []

    async def main():
        batcher = MicroBatcher(echo_batch(calls), max_batch=8, max_wait_s=0.05, queue_size=8)
        batcher.start()
        image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)
        out = await asyncio.gather(*(batcher.submit(image, mask, {"seed": 0, "steps": t})
                                     for t in (5, 6, 5)))
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert [o[0] for o in out] == [[0.0], [0.0], [0.0]]
    assert sorted(n for n, _ in calls) == [1, 2]
    assert sorted(kw["steps"] for _, kw in calls) == [5, 5 + 1]


def test_requests_differing_only_in_seed_share_a_call_and_keep_their_seed():
    """The seed is per image (issue 20: it split batches, 8.4 vs 12.1 requests/s)."""
    calls = []

    async def main():
        batcher = MicroBatcher(echo_batch(calls), max_batch=8, max_wait_s=0.05, queue_size=8)
        batcher.start()
        image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)
        out = await asyncio.gather(*(batcher.submit(image, mask, {"seed": s, "steps": 5})
                                     for s in (0, 7, 3)))
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert [o[0] for o in out] == [[0.0], [7.0], [3.0]]
    assert len(calls) == 1 and calls[0][1]["seed"] == [0, 7, 3] and calls[0][1]["steps"] == 5


def test_cancelled_request_is_skipped_and_queue_bound_holds():
    calls, gate = [], threading.Event()
    cancelled = []

    def slow(images, masks, kwargs):
        gate.wait(5)
        return echo_batch(calls)(images, masks, kwargs)

    async def main():
        batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0, queue_size=1,
                               on_cancelled=cancelled.append)
        batcher.start()
        image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)
        first = asyncio.ensure_future(batcher.submit(image, mask, {"seed": 1}))
        await asyncio.sleep(0.05)  # the worker holds `first`
        second = asyncio.ensure_future(batcher.submit(image, mask, {"seed": 2}))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(image, mask, {"seed": 3})
        second.cancel()
        gate.set()
        samples, _ = await first
        await asyncio.sleep(0.05)
        await batcher.stop()
        return samples

    assert asyncio.run(main()) == [1.0]
    assert [kw["seed"] for _, kw in calls] == [[1]]  # seed 2 never ran
    assert sum(cancelled) == 1


def test_predictor_failure_reaches_every_caller_it_concerns():
    def broken(images, masks, kwargs):
        raise ValueError("unknown method 'x'")

    async def main():
        batcher = MicroBatcher(broken, max_batch=4, max_wait_s=0.02, queue_size=4)
        batcher.start()
        image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)
        out = await asyncio.gather(*(batcher.submit(image, mask, {}) for _ in range(2)),
                                   return_exceptions=True)
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert all(isinstance(o, ValueError) and "unknown method" in str(o) for o in out)


def test_one_poisoned_request_fails_alone_and_its_neighbours_succeed():
    """6 valid + 1 the predictor refuses, gathered into one batch: the batched call fails, each
    request is rerun alone, so only the poisoned one gets the error (issue 20: 7 x 422 before)."""
    calls = []

    def picky(images, masks, kwargs):
        calls.append(len(images))
        if any(np.isnan(img).any() for img in images):
            raise ValueError("image holds NaN")
        return [[float(img.sum())] for img in images]

    async def main():
        batcher = MicroBatcher(picky, max_batch=8, max_wait_s=0.05, queue_size=16)
        batcher.start()
        mask = np.ones((4, 4), bool)
        images = [np.full((4, 4), float(n), np.float32) for n in range(7)]
        images[3] = np.full((4, 4), np.nan, np.float32)
        out = await asyncio.gather(*(batcher.submit(im, mask, {"seed": 0}) for im in images),
                                   return_exceptions=True)
        await batcher.stop()
        return out

    out = asyncio.run(main())
    assert isinstance(out[3], ValueError) and "NaN" in str(out[3])
    for n in (0, 1, 2, 4, 5, 6):
        samples, timing = out[n]
        assert samples == [16.0 * n] and timing.batch_size == 1
    assert calls[0] == 7 and calls[1:] == [1] * 7  # one failed batch, then each alone


def test_announced_arrivals_extend_the_wait():
    """A request still being read keeps the worker gathering past max_wait (up to 10x)."""
    calls = []

    async def main():
        batcher = MicroBatcher(echo_batch(calls), max_batch=2, max_wait_s=0.02, queue_size=4)
        batcher.start()
        image, mask = np.zeros((4, 4), np.float32), np.ones((4, 4), bool)

        async def late_request():
            with batcher.arriving():
                await asyncio.sleep(0.08)  # 4x max_wait spent "reading the upload"
                future = batcher.enqueue(image, mask, {"seed": 0})
            return await future

        late = asyncio.ensure_future(late_request())
        await asyncio.sleep(0)  # the late request announces itself first
        first = await batcher.submit(image, mask, {"seed": 0})
        second = await late
        await batcher.stop()
        return first, second

    first, second = asyncio.run(main())
    assert [n for n, _ in calls] == [2]  # one call for both, despite the 80 ms gap
    assert first[1].batch_size == second[1].batch_size == 2
