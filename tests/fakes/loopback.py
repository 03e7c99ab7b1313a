"""Shared plumbing for the Pixazo and WaveSpeed fakes: a 127.0.0.1 server, jobs that progress by hand or on a
schedule, request recording, fault injection and webhook posting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

import aiohttp
from aiohttp import web

from tests.fakes.faults import FaultPlan, RecordedRequest, middleware

# Job index (0, 1, 2, … in submit order) -> (queue_seconds, processing_seconds).
Schedule = Callable[[int], tuple[float, float]]


class Phase(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"  # Pixazo's "system error, not charged"

    @property
    def terminal(self) -> bool:
        return self not in (Phase.QUEUED, Phase.PROCESSING)


@dataclass
class FakeJob:
    """One job at a fake provider. Automatic timing applies until a manual transition overrides it."""

    id: str
    index: int
    input: dict[str, Any]
    created: float  # the fake's monotonic clock
    created_wall: float
    timing: tuple[float, float] | None = None
    webhook_url: str | None = None
    webhook_mode: str = "terminal"
    forced: Phase | None = None
    started_wall: float | None = None
    finished_wall: float | None = None
    error: str | None = None
    raw_status: str | None = None  # a provider-specific terminal spelling (WaveSpeed "timeout", …)

    def phase(self, now: float) -> Phase:
        """The job's phase at monotonic time `now`."""
        if self.forced is not None:
            return self.forced
        if self.timing is None:
            return Phase.QUEUED
        queue, processing = self.timing
        elapsed = now - self.created
        if elapsed < queue:
            return Phase.QUEUED
        return Phase.PROCESSING if elapsed < queue + processing else Phase.COMPLETED

    def started_at(self, now: float) -> float | None:
        """Wall-clock start of processing, if it has started."""
        if self.started_wall is not None or self.forced is not None or self.timing is None:
            return self.started_wall
        return self.created_wall + self.timing[0] if self.phase(now) is not Phase.QUEUED else None

    def finished_at(self, now: float) -> float | None:
        """Wall-clock end, if the job has ended."""
        if self.finished_wall is not None or self.forced is not None or self.timing is None:
            return self.finished_wall
        return self.created_wall + sum(self.timing) if self.phase(now).terminal else None


@dataclass(frozen=True)
class WebhookDelivery:
    """One callback the fake posted."""

    url: str  # as registered at submit
    target: str  # where it was actually posted, after `webhook_redirects`
    headers: dict[str, str]
    body: bytes
    status: int | None  # the receiver's answer; None if unreachable


class LoopbackFake:
    """Base of the provider fakes. Subclasses add routes and render provider-specific shapes."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.schedule = schedule
        self.clock = clock
        self.wall = wall
        self.requests: list[RecordedRequest] = []
        self.faults = FaultPlan()
        self.jobs: dict[str, FakeJob] = {}
        # Registered webhook URL prefix -> loopback replacement, so https-only providers can reach a test receiver.
        self.webhook_redirects: dict[str, str] = {}
        self.webhooks: list[WebhookDelivery] = []
        self.auto_webhooks = True  # post a callback when a job reaches a terminal phase
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._base_url: str | None = None

    # -- to be provided by subclasses -------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register the provider's routes, each with a `name` for fault targeting."""
        raise NotImplementedError

    async def notify(self, job: FakeJob) -> None:
        """Post the provider's callback for `job`'s current phase."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def running(cls, **kwargs: Any) -> AsyncIterator[Self]:
        """Run the fake on 127.0.0.1 at a random port for the duration of the block."""
        fake = cls(**kwargs)
        await fake.open()
        try:
            yield fake
        finally:
            await fake.close()

    async def open(self) -> None:
        """Bind and serve."""
        app = web.Application(middlewares=[middleware(self.faults, self.requests, self._stopping)])
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._base_url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Stop serving; pending slow replies and scheduled callbacks end now."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>` once started."""
        if self._base_url is None:
            raise RuntimeError("the fake is not running")
        return self._base_url

    # -- helpers for tests ------------------------------------------------------------------------

    def seen(self, route: str) -> list[RecordedRequest]:
        """Recorded requests on one named route, oldest first."""
        return [r for r in self.requests if r.route == route]

    def job(self, job_id: str) -> FakeJob:
        """The job with this id (KeyError if unknown)."""
        return self.jobs[job_id]

    def new_job(self, job_id: str, payload: dict[str, Any], webhook_url: str | None, mode: str = "terminal") -> FakeJob:
        """Create a job; with a schedule it progresses by itself and posts its callback when done."""
        index = len(self.jobs)
        timing = self.schedule(index) if self.schedule else None
        job = FakeJob(job_id, index, payload, self.clock(), self.wall(), timing, webhook_url, mode)
        self.jobs[job_id] = job
        if timing is not None and webhook_url:
            self.spawn(self._auto_notify(job, timing))
        return job

    async def _auto_notify(self, job: FakeJob, timing: tuple[float, float]) -> None:
        if await self._sleep(timing[0]) and job.forced is None and job.webhook_mode == "sync":
            await self._notify_if_enabled(job)
        if await self._sleep(timing[1]) and job.forced is None:
            await self._notify_if_enabled(job)

    async def _notify_if_enabled(self, job: FakeJob) -> None:
        if self.auto_webhooks and job.webhook_url:
            await self.notify(job)

    async def transition(self, job_id: str, phase: Phase, *, error: str | None = None, raw: str | None = None) -> None:
        """Move a job by hand and post its callback when that phase warrants one."""
        job = self.jobs[job_id]
        job.forced, job.error, job.raw_status = phase, error, raw
        if phase is Phase.PROCESSING:
            job.started_wall = self.wall()
        elif phase.terminal:
            job.started_wall = job.started_wall or self.wall()
            job.finished_wall = self.wall()
        if phase.terminal or job.webhook_mode == "sync":
            await self._notify_if_enabled(job)

    async def post_webhook(self, url: str, body: bytes, headers: Mapping[str, str]) -> int | None:
        """POST a callback (after applying `webhook_redirects`) and record it."""
        target = url
        for prefix, replacement in self.webhook_redirects.items():
            if url.startswith(prefix):
                target = replacement + url[len(prefix) :]
                break
        status: int | None = None
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with self._session.post(target, data=body, headers=dict(headers), timeout=timeout) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            status = None
        self.webhooks.append(WebhookDelivery(url, target, dict(headers), body, status))
        return status

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task that stops with the fake."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the fake stops first; True if the full time passed."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False


class WebhookReceiver:
    """A 127.0.0.1 endpoint that collects the callbacks a fake posts (the bot's side, for tests)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @classmethod
    @asynccontextmanager
    async def running(cls, status: int = 200) -> AsyncIterator[WebhookReceiver]:
        """Serve at a random port for the duration of the block."""
        receiver = cls(status)
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver._collect)
        receiver._runner = web.AppRunner(app, access_log=None)
        await receiver._runner.setup()
        await web.TCPSite(receiver._runner, "127.0.0.1", 0).start()
        receiver.base_url = f"http://127.0.0.1:{receiver._runner.addresses[0][1]}"
        try:
            yield receiver
        finally:
            await receiver._runner.cleanup()

    async def _collect(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._arrived:
            self.received.append((dict(request.headers), body))
            self._arrived.notify_all()
        return web.Response(status=self.status)

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Return once `count` callbacks have arrived (TimeoutError otherwise)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.received) >= count), timeout)
