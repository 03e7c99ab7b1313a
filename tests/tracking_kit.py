"""A real App against the provider fakes, for the service-level fault, failover and webhook tests.

Like tests/harness.py (it reuses its Harness and ReplyLog), plus:
- fast HTTP retries (a RetryPolicy through App.build's test seam) so backoff never slows a test;
- a planner whose gaps are scaled down (the polling rules are the real ones, only time is compressed);
- optionally the bot's own web server on an ephemeral 127.0.0.1 port, with PUBLIC_BASE_URL pointing at it;
- a jumpable wall clock, to reach a job's deadline without waiting for it;
- a reply log that counts deliveries, so a duplicate delivery cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot import messages
from bot.app import App
from bot.config import Settings
from bot.media import probe_video
from bot.polling import PollPlanner
from bot.ports import Delivery, Progress
from bot.web import bound_port, start_web
from providers.base import JobHandle
from providers.http import RetryPolicy
from storage.jobs import Job, Phase
from storage.ledger import EntryKind
from tests.fakes.fal_server import FakeFal
from tests.fakes.pixazo_server import FakePixazo
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.harness import PLATFORM, Harness, ReplyLog, make_settings

# Four attempts, at most 50 ms apart, and a 1 s per-request timeout (so a "slow reply" fault is a timeout).
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, timeout=1.0)
PLANNER_SCALE = 0.1  # the planner's gaps ÷10: first look 0.1 s after a submit instead of 1 s
FINISH_TIMEOUT = 15.0
PUBLIC_IMAGE = "https://cdn.example/cat.png"  # an image URL a provider may fetch (a Discord attachment, say)

START = 20  # starting credits
COST = 4  # one 512P image-to-video clip
REFUND = messages.REFUND_SUFFIX.format(cost=COST, s="s")


class JumpClock:
    """Wall time plus an offset that tests move forward (the deadline check reads this clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class CountingReplyLog(ReplyLog):
    """harness.ReplyLog that also counts how many videos each job delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: dict[str, int] = {}

    def factory(self, target: Mapping[str, Any]) -> Any:
        return _CountingReply(self)


class _CountingReply:
    def __init__(self, log: CountingReplyLog) -> None:
        self.log = log

    async def progress(self, job: Job, update: Progress) -> None:
        self.log.seen(job.id).progress.append(update)

    async def deliver(self, job: Job, video: Delivery, text: str) -> None:
        seen = self.log.seen(job.id)
        seen.delivered, seen.delivered_text = video, text
        self.log.deliveries[job.id] = self.log.deliveries.get(job.id, 0) + 1

    async def fail(self, job: Job, text: str) -> None:
        self.log.seen(job.id).failed.append(text)


@dataclass
class Kit(Harness):
    replies: CountingReplyLog
    clock: JumpClock
    web_url: str | None = None  # the bot's own server, when started

    async def finish(self, job_id: str) -> Job:
        async with asyncio.timeout(FINISH_TIMEOUT):
            return await super().finish(job_id)

    async def wait_phase(self, job_id: str, phase: Phase, timeout: float = 5.0) -> Job:
        """Wait until the job's stored phase is `phase` (checked on a short tick); TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                job = await self.app.jobs.get(job_id)
                if job is not None and job.phase is phase:
                    return job
                await asyncio.sleep(0.01)

    async def request_id(self, job_id: str, timeout: float = 5.0) -> str:
        """Wait until the job is at a provider; its request id there."""
        async with asyncio.timeout(timeout):
            while True:
                job = await self.app.jobs.get(job_id)
                if job is not None and job.handle is not None:
                    return JobHandle.from_json(job.handle).request_id
                await asyncio.sleep(0.01)

    async def ledger_kinds(self, job_id: str, user: str = "test:alice") -> list[EntryKind]:
        """The ledger entries of one job, oldest first."""
        entries = await self.app.ledger.history(user, 100)
        return [e.kind for e in reversed(entries) if e.job_id == job_id]

    async def post(self, path: str, body: bytes = b"{}", headers: Mapping[str, str] | None = None) -> int:
        assert self.web_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.web_url + path, data=body, headers=dict(headers or {})) as resp,
        ):
            return resp.status

    async def get(self, path: str) -> tuple[int, bytes]:
        assert self.web_url is not None
        async with aiohttp.ClientSession() as session, session.get(self.web_url + path) as resp:
            return resp.status, await resp.read()


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    policy: RetryPolicy = FAST,
    planner_scale: float = PLANNER_SCALE,
    web_server: bool = False,
) -> AsyncIterator[Kit]:
    """Build and start the App; with `web_server`, serve it on 127.0.0.1 and, unless PUBLIC_BASE_URL is
    already set (an https name a fake redirects to us), point PUBLIC_BASE_URL at that server."""
    clock = JumpClock()
    app = await App.build(settings, clock=clock, retry_policy=policy)
    app.lifecycle.planner = PollPlanner(app.jobs, scale=planner_scale)
    replies = CountingReplyLog()
    app.add_replies(PLATFORM, replies.factory)
    runner: web.AppRunner | None = None
    web_url = None
    try:
        if web_server:
            runner = await start_web(app)
            web_url = f"http://127.0.0.1:{bound_port(runner)}"
            if settings.public_base_url is None:
                # The port is known only now; every component shares this Settings object.
                settings.public_base_url = web_url
        await app.start()
        yield Kit(app, replies, clock, web_url)
    finally:
        if runner is not None:
            await runner.cleanup()
        await app.close(grace=0)  # abrupt, like a crash: tests of resume rely on steps being cut off


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait until `predicate()` is true (checked on a short tick); TimeoutError otherwise."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


def fal_settings(tmp_path: Path, fake: FakeFal, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fal_key": fake.api_key,
        "fal_base_url": fake.base_url,
        "fal_jwks_url": fake.jwks_url,
        "providers": ["fal"],
        "starting_credits": START,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


def pixazo_settings(tmp_path: Path, fake: FakePixazo, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pixazo_api_key": fake.api_key,
        "pixazo_base_url": fake.base_url,
        "providers": ["pixazo"],
        "starting_credits": START,
    }
    return make_settings(tmp_path, **{**values, **overrides})


def wavespeed_settings(tmp_path: Path, fake: FakeWaveSpeed, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "wavespeed_api_key": fake.api_key,
        "wavespeed_base_url": fake.base_url,
        "providers": ["wavespeed"],
        "starting_credits": START,
    }
    return make_settings(tmp_path, **{**values, **overrides})


async def delivered_once(kit: Kit, job_id: str) -> None:
    """The member got one playable video and paid once; nothing else was said."""
    job = await kit.finish(job_id)
    seen = kit.replies.seen(job_id)
    assert job.phase is Phase.DELIVERED
    assert seen.failed == []
    assert kit.replies.deliveries[job_id] == 1
    assert seen.delivered is not None and probe_video(seen.delivered.path).codec == "h264"
    assert seen.delivered_text == messages.DONE.format(cost=COST, s="s", balance=START - COST)
    assert await kit.balance() == START - COST
    assert await kit.ledger_kinds(job_id) == [EntryKind.HOLD, EntryKind.CAPTURE]


async def refunded(kit: Kit, job_id: str, text: str, phase: Phase = Phase.FAILED) -> None:
    """The member was told `text` (plus the refund note), got no video, and has every credit back."""
    job = await kit.finish(job_id)
    seen = kit.replies.seen(job_id)
    assert job.phase is phase
    assert seen.delivered is None
    assert seen.failed == [text + REFUND]
    assert await kit.balance() == START
    assert await kit.ledger_kinds(job_id) == [EntryKind.HOLD, EntryKind.RELEASE]
