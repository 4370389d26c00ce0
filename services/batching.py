"""An asyncio micro-batcher: concurrent requests share one forward pass, run in a worker thread.

Each request submits its samples and awaits their results. The batcher waits at most `window_s` after the
oldest queued request arrived (less if `max_batch` samples are already queued), hands all queued requests'
samples to `run_batch` in one call on a single worker thread, and gives each request back its own slice.
While a forward pass runs, new requests queue up and form the next batch, so a busy tier batches more.
The event loop runs the model itself only for a caller that says it is alone (`submit(..., inline=True)`: no
other request in the tier, nothing queued, no forward pass running): then there is no company to wait for and the
two thread hand-offs would only add latency; the pass is small (`TierSettings.inline_forward_max` samples).
Otherwise the event loop never runs the model, so it keeps accepting connections and answering /healthz.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger("services.batching")


class BatcherClosed(RuntimeError):
    """The batcher was stopped (the service is shutting down)."""


@dataclass
class _Job(Generic[Item, Result]):
    items: Sequence[Item]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[Item, Result]):
    """Group the samples of concurrent `submit` calls into calls of `run_batch(items) -> results`.

    `run_batch` must return one result per item, in order. A single submission larger than `max_batch`
    is passed whole; `run_batch` is expected to chunk it (see `chunked`).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        window_s: float = 0.005,
        max_batch: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._window_s = max(0.0, window_s)
        self._max_batch = max(1, max_batch)
        self._on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = False  # a forward pass is on the worker thread

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dimee-forward")
        self._task = asyncio.create_task(self._loop(), name="dimee-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, items: Sequence[Item], inline: bool = False) -> list[Result]:
        """Queue `items` for the next forward pass and wait for their results. `inline`: the caller is the tier's
        only request; if nothing is queued or running either, the pass runs right here on the event loop."""
        if self._task is None or self._wakeup is None or self._full is None:
            raise BatcherClosed("the batcher is not running")
        if not items:
            return []
        if inline and not self._jobs and not self._running:
            if self._on_batch is not None:
                self._on_batch(len(items))
            results = self._run_batch(list(items))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return results
        job: _Job = _Job(items, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued += len(items)
        self._wakeup.set()
        if self._queued >= self._max_batch:
            self._full.set()
        return await job.future

    # ---- the loop --------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            wait = self._jobs[0].arrived + self._window_s - time.monotonic()
            if wait > 0 and self._queued < self._max_batch:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            jobs = self._take()
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            if self._on_batch is not None:
                self._on_batch(len(items))
            self._running = True
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                log.exception("forward pass of %d samples failed", len(items))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            finally:
                self._running = False
            start = 0
            for job in jobs:
                end = start + len(job.items)
                if not job.future.done():  # the requester may have given up (deadline, disconnect)
                    job.future.set_result(results[start:end])
                start = end

    def _take(self) -> list[_Job]:
        """Whole jobs from the queue, oldest first, up to max_batch samples (at least one job)."""
        taken: list[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled while queued
                self._jobs.popleft()
                self._queued -= len(job.items)
                continue
            if taken and size + len(job.items) > self._max_batch:
                break
            self._jobs.popleft()
            self._queued -= len(job.items)
            taken.append(job)
            size += len(job.items)
        if self._queued < self._max_batch and self._full is not None:
            self._full.clear()
        return taken


def chunked(run: Callable[[list[Item]], list[Result]], size: int) -> Callable[[list[Item]], list[Result]]:
    """Wrap `run` so that it never sees more than `size` items at once."""

    def run_in_chunks(items: list[Item]) -> list[Result]:
        results: list[Result] = []
        for start in range(0, len(items), size):
            results.extend(run(items[start : start + size]))
        return results

    return run_in_chunks
