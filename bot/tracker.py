"""One scheduler for every job in flight: a heap of due times, not a sleeping coroutine per job."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FINISHED_KEPT = 4096
Step = Callable[[str], Awaitable[float | None]]


class Tracker:
    """Runs `step(job_id)` when a job is due; `step` returns the delay to its next turn, or None when done.

    A job is stepped by at most one task at a time; a poke (webhook, new job) while it runs makes it run
    again right after. Concurrency is bounded so a burst of due jobs cannot flood providers.
    """

    def __init__(
        self,
        step: Step,
        *,
        concurrency: int = 16,
        clock: Callable[[], float] = time.monotonic,
        error_delay: float = 30.0,
    ) -> None:
        self._step = step
        self._clock = clock
        self._error_delay = error_delay  # how soon a step that raised is tried again
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # Done markers for wait_finished(), oldest first; bounded so a long-running bot does not grow forever.
        self._finished: OrderedDict[str, asyncio.Event] = OrderedDict()
        self._stopping = False

    def schedule(self, job_id: str, delay: float) -> None:
        """Run the job after `delay` seconds, or sooner if it is already due sooner."""
        at = self._clock() + max(0.0, delay)
        if job_id in self._running:
            if delay <= 0:
                self._again.add(job_id)
            else:
                self._due[job_id] = min(at, self._due.get(job_id, at))
            return
        current = self._due.get(job_id)
        if current is not None and current <= at:
            return
        self._due[job_id] = at
        heapq.heappush(self._heap, (at, next(self._seq), job_id))
        self._idle.clear()
        self._wake.set()

    def poke(self, job_id: str) -> None:
        self.schedule(job_id, 0.0)

    def pending(self) -> int:
        return len(self._due) + len(self._running)

    async def wait_finished(self, job_id: str) -> None:
        """Return once `step` has reported the job done (settled and the member told)."""
        await self._finished.setdefault(job_id, asyncio.Event()).wait()

    async def wait_idle(self) -> None:
        """Return once no job is scheduled or running (used by one-shot commands and tests)."""
        await self._idle.wait()

    async def run(self) -> None:
        while not self._stopping:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                at, _, job_id = heapq.heappop(self._heap)
                if self._due.get(job_id) != at:
                    continue  # superseded by an earlier schedule
                del self._due[job_id]
                # Counted as running from here: a poke while we wait for a slot must not queue a second step.
                self._running.add(job_id)
                await self._slots.acquire()
                self._start(job_id)
            self._check_idle()
            timeout = self._heap[0][0] - self._clock() if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def stop(self, grace: float = 10.0) -> None:
        """Start no new step; let running ones finish for up to `grace` seconds, then cancel them.

        Cutting a step short is safe (every phase is written before it is acted on) but can cost a member:
        a submit cut off mid-call has an unknown outcome and is refunded rather than resent. So a graceful
        stop lets the calls in flight land first.
        """
        self._stopping = True
        self._wake.set()
        running = list(self._tasks)
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self, job_id: str) -> None:
        task = asyncio.create_task(self._run_one(job_id), name=f"job-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(self, job_id: str) -> None:
        delay: float | None = self._error_delay
        try:
            delay = await self._step(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not lose the job: log it and come back later; the deadline bounds the retries.
            log.exception("job %s: step failed; retrying in %.0fs", job_id, delay)
        finally:
            self._slots.release()
            self._running.discard(job_id)
        pending = self._due.pop(job_id, None)
        if job_id in self._again:
            self._again.discard(job_id)
            delay = 0.0
        if pending is not None:
            delay = min(delay if delay is not None else float("inf"), max(0.0, pending - self._clock()))
        if delay is not None:
            self.schedule(job_id, delay)
        else:
            self._finished.setdefault(job_id, asyncio.Event()).set()
            self._trim_finished()
        self._check_idle()
        self._wake.set()

    def _trim_finished(self) -> None:
        """Forget the oldest done markers; one still awaited (not set) is kept and moved to the back."""
        for _ in range(len(self._finished) - FINISHED_KEPT):
            job_id, event = self._finished.popitem(last=False)
            if not event.is_set():
                self._finished[job_id] = event

    def _check_idle(self) -> None:
        if not self._due and not self._running:
            self._idle.set()
