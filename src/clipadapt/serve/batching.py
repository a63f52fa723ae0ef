"""Server-side batching: requests wait in a bounded queue; one worker runs them together.

The worker takes the oldest request, then keeps taking queued ones until the batch holds
``max_batch`` images or ``max_wait`` seconds have passed, runs one forward pass over all of
them in a thread (the event loop keeps serving), and answers every request its own rows.
A request is never split: one larger than ``max_batch`` runs alone. ``max_batch=1`` runs
every request on its own (no batching), which is what the load test compares against.
A full queue refuses new requests at once (``QueueFull``: the app answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch

Rows = list[dict[str, Any]]


class QueueFull(Exception):
    """The batching queue holds ``max_queue`` requests already."""


@dataclass
class _Job:
    pixels: torch.Tensor  # (k, 3, H, W)
    answer: asyncio.Future[Rows] = field(repr=False)


class Batcher:
    """Runs ``forward(pixels (n, 3, H, W)) -> n rows`` over batches of queued requests."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], Rows],
        executor: Executor,
        *,
        max_batch: int = 16,
        max_wait: float = 0.002,
        max_queue: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(
                f"batching needs max_batch >= 1, max_queue >= 1 and max_wait >= 0 "
                f"(got {max_batch}, {max_queue}, {max_wait})"
            )
        self.forward = forward
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self.batches = 0  # forward passes run so far
        self._held: _Job | None = None  # taken from the queue but over the batch size
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, pixels: torch.Tensor) -> Rows:
        """The rows of ``pixels``, computed in some batch; ``QueueFull`` when full."""
        job = _Job(pixels, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return await job.answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._next(None)]
            size = len(jobs[0].pixels)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                job = await self._next(deadline - loop.time())
                if job is None:
                    break
                if size + len(job.pixels) > self.max_batch:
                    self._held = job
                    break
                jobs.append(job)
                size += len(job.pixels)
            jobs = [job for job in jobs if not job.answer.done()]  # callers gone
            if not jobs:
                continue
            pixels = torch.cat([job.pixels for job in jobs])
            try:
                rows = await loop.run_in_executor(self.executor, self.forward, pixels)
            except Exception as exc:
                for job in jobs:
                    if not job.answer.done():
                        job.answer.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for job in jobs:
                end = start + len(job.pixels)
                if not job.answer.done():
                    job.answer.set_result(rows[start:end])
                start = end

    async def _next(self, timeout: float | None) -> _Job | None:
        """The held job, else the next queued one; None when ``timeout`` passes first."""
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return self.queue.get_nowait() if not self.queue.empty() else None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
