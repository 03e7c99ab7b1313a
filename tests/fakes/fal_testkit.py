"""Small helpers shared by the fal tests: a recording sleep, a hand-wound clock, a webhook receiver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from providers.base import ImageInput, JobKind, JobSpec
from providers.fal import FalProvider
from providers.http import RetryPolicy
from tests.fakes.clips import png_bytes
from tests.fakes.fal_server import FakeFal


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Received:
    headers: CIMultiDict[str]
    body: bytes


class WebhookReceiver:
    """The bot's side of a fal callback on loopback: keeps each raw POST and answers 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[WebhookReceiver]:
        receiver = cls()
        app = web.Application()
        app.router.add_post("/hooks/fal", receiver._handle)
        receiver._runner = web.AppRunner(app, access_log=None)
        await receiver._runner.setup()
        site = web.TCPSite(receiver._runner, "127.0.0.1", 0)
        await site.start()
        host, port = receiver._runner.addresses[0][:2]
        # A query token, as the bot's real webhook URL carries one.
        receiver.url = f"http://{host}:{port}/hooks/fal?token=t0k"
        try:
            yield receiver
        finally:
            await receiver._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(CIMultiDict(request.headers), await request.read()))
        return web.Response(text="ok")


def fal_provider(
    session: aiohttp.ClientSession,
    fake: FakeFal,
    sleep: RecordingSleep,
    *,
    attempts: int = 4,
    timeout: float = 2.0,
    **options: Any,
) -> FalProvider:
    """A real FalProvider aimed at the fake, with fast, recorded retries."""
    policy = RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=30.0, timeout=timeout)
    options.setdefault("api_key", fake.api_key)
    return FalProvider(session, base_url=fake.base_url, jwks_url=fake.jwks_url, policy=policy, sleep=sleep, **options)


def i2v_spec(**fields: Any) -> JobSpec:
    fields.setdefault("image", ImageInput(png_bytes(), "image/png"))
    return JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt=fields.pop("prompt", "the dragon turns its head"), **fields)


def t2v_spec(**fields: Any) -> JobSpec:
    return JobSpec(kind=JobKind.TEXT_TO_VIDEO, prompt=fields.pop("prompt", "a dog in a red hat"), **fields)
