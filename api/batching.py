"""Dynamic micro-batching: one worker per device runs batched predictor calls.

Requests are queued (bounded: a full queue is refused, the caller answers 503). The worker takes
the first waiting request, then gathers more for up to ``max_wait_s`` or until ``max_batch``
images, groups the gathered requests by a compatibility key (image shape, steps, method, ...:
everything one ``NegativeGenerator.generate`` call shares; the seed is not in it, the predictor
takes one per image) and runs one predictor call per group
in a single dedicated thread, so the predictor (and its diffusers scheduler state) is never used
by two calls at once. If a batched call fails, every request of it is rerun alone, so a request
the predictor refuses fails by itself and never takes its neighbours with it. A request whose
caller went away (disconnect, timeout) has its future cancelled; the worker drops it before the
batch runs.

Closed-loop clients (each sends its next request when the last one returns) arrive spread out
by the time the server needs to read and decode their uploads; a fixed ``max_wait`` then splits
them into small batches. Handlers therefore announce a request while they read it
(:meth:`MicroBatcher.arriving`), and the worker keeps gathering, up to ``_ARRIVAL_PATIENCE`` x
``max_wait``, while announced requests are still on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# (images, masks, shared generate() kwargs) -> results[image][sample]
RunBatch = Callable[[list[np.ndarray], list[np.ndarray], dict[str, Any]], list[list[Any]]]


_GATHER_FACTOR = 4  # gather at most this many batches' worth of requests per round
_ARRIVAL_PATIENCE = 10  # while requests are still being received, wait up to this x max_wait


class QueueFullError(RuntimeError):
    """The batching queue holds ``queue_size`` requests already."""


@dataclass
class BatchTiming:
    """How one request's work was done (copied into each negative's metadata)."""

    queue_ms: float  # from submit() to the start of its batch
    generate_ms: float  # wall time of the batched predictor call
    batch_size: int  # images in that predictor call


@dataclass
class _Work:
    image: np.ndarray
    mask: np.ndarray
    kwargs: dict[str, Any]
    key: Hashable
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


# kwargs that may differ inside one predictor call: the predictor takes them as one value per
# image (``NegativeGenerator.generate(seed=[...])``: per-row noise generators).
PER_IMAGE_KWARGS = ("seed",)


def compatibility_key(image: np.ndarray, kwargs: dict[str, Any]) -> Hashable:
    """Requests with equal keys can share one predictor call: same image shape, same kwargs
    except the per-image ones (``PER_IMAGE_KWARGS``)."""
    shared = {k: v for k, v in kwargs.items() if k not in PER_IMAGE_KWARGS}
    return (image.shape, tuple(sorted(shared.items())))


def batch_kwargs(kwargs_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The kwargs of one predictor call for requests with one key: the shared values, and a list
    (one per image) for each per-image kwarg."""
    out = dict(kwargs_list[0])
    for name in PER_IMAGE_KWARGS:
        if name in out:
            out[name] = [kw[name] for kw in kwargs_list]
    return out


class MicroBatcher:
    """Queue + single worker that batches compatible requests into one predictor call."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[int], None] | None = None,
        on_cancelled: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Work] = asyncio.Queue(maxsize=queue_size)
        self._on_batch = on_batch or (lambda n: None)
        self._on_cancelled = on_cancelled or (lambda n: None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")
        self._worker: asyncio.Task | None = None
        self._carry: list[_Work] = []  # gathered but incompatible with the group that ran
        self._arriving = 0  # requests being received and decoded, not yet submitted

    @property
    def depth(self) -> int:
        """Requests waiting (queued or gathered but not yet running)."""
        return self._queue.qsize() + len(self._carry)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap the reading of a request that will probably be submitted (see module doc)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for work in self._carry + _drain(self._queue):
            if not work.future.done():
                work.future.cancel()
        self._carry = []
        self._executor.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, image: np.ndarray, mask: np.ndarray, kwargs: dict[str, Any]) -> asyncio.Future:
        """Queue one image now (no await); the future gives (samples, BatchTiming).

        Raises QueueFullError when ``queue_size`` requests wait. Cancel the future to drop it.
        """
        loop = asyncio.get_running_loop()
        work = _Work(image, mask, dict(kwargs), compatibility_key(image, kwargs), loop.create_future())
        try:
            self._queue.put_nowait(work)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self._queue.maxsize} requests are already waiting") from None
        return work.future

    async def submit(
        self, image: np.ndarray, mask: np.ndarray, kwargs: dict[str, Any]
    ) -> tuple[list[Any], BatchTiming]:
        """Queue one image and wait; returns its samples and timing. Cancelling cancels it."""
        future = self.enqueue(image, mask, kwargs)
        try:
            return await future
        finally:
            if not future.done():
                future.cancel()  # the worker skips it

    # -- worker ----------------------------------------------------------------------------------
    async def _gather(self) -> list[_Work]:
        pending = [w for w in self._carry if not w.future.cancelled()]
        self._on_cancelled(len(self._carry) - len(pending))
        self._carry = []
        if not pending:
            pending.append(await self._queue.get())
        begin = time.perf_counter()
        soft, hard = begin + self.max_wait_s, begin + _ARRIVAL_PATIENCE * self.max_wait_s
        slice_s = max(self.max_wait_s / 4, 0.001)
        while True:
            live = [w for w in pending if not w.future.cancelled()]
            # full batch for the oldest request's group, or enough gathered for several groups
            if live and sum(w.key == live[0].key for w in live) >= self.max_batch:
                break
            if len(live) >= _GATHER_FACTOR * self.max_batch:
                break
            now = time.perf_counter()
            deadline = hard if self._arriving > 0 else soft
            if now >= deadline:
                try:  # take whatever is already queued, without waiting
                    pending.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    break
            try:
                timeout = min(deadline - now, slice_s)
                pending.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                continue
        live = [w for w in pending if not w.future.cancelled()]
        self._on_cancelled(len(pending) - len(live))
        return live

    async def _loop(self) -> None:
        while True:
            gathered = await self._gather()
            if not gathered:
                continue
            # The oldest request's group runs now; the rest waits for the next round.
            key = gathered[0].key
            group = [w for w in gathered if w.key == key][: self.max_batch]
            chosen = {id(w) for w in group}
            self._carry = [w for w in gathered if id(w) not in chosen]
            start = time.perf_counter()
            try:
                results = await self._run(group)
            except Exception as exc:
                if len(group) == 1:
                    logger.warning("predictor call failed for one request: %s", exc)
                    if not group[0].future.done():
                        group[0].future.set_exception(exc)
                    continue
                # One bad row must not fail its neighbours: rerun every request alone, so each
                # gets its own result or its own error (a failure is rare; the retry costs one
                # predictor call per request of this batch).
                logger.warning("predictor call failed for a batch of %d (%s); running each "
                               "request alone", len(group), exc)
                for w in group:
                    if w.future.done():
                        continue
                    alone = time.perf_counter()
                    try:
                        results = await self._run([w])
                    except Exception as row_exc:
                        if not w.future.done():
                            w.future.set_exception(row_exc)
                        continue
                    self._deliver([w], results, start, alone)
                continue
            self._deliver(group, results, start, start)

    def _deliver(self, group: list[_Work], results: list, start: float, call_start: float) -> None:
        """Hand each live request its result and timing (``start``: when its batch was taken;
        ``call_start``: when the predictor call that produced ``results`` began)."""
        generate_ms = (time.perf_counter() - call_start) * 1e3
        self._on_batch(len(group))
        for w, result in zip(group, results, strict=True):
            if not w.future.done():
                w.future.set_result((result, BatchTiming(
                    queue_ms=(start - w.submitted) * 1e3, generate_ms=generate_ms,
                    batch_size=len(group))))

    async def _run(self, group: list[_Work]) -> list[list[Any]]:
        """One predictor call for ``group`` (same key) in the predictor thread."""
        results = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._run_batch, [w.image for w in group], [w.mask for w in group],
            batch_kwargs([w.kwargs for w in group]),
        )
        if len(results) != len(group):
            raise RuntimeError(f"predictor returned {len(results)} results for {len(group)} images")
        return results


def _drain(queue: asyncio.Queue) -> list[_Work]:
    items = []
    while True:
        try:
            items.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return items
