"""The composition root: builds storage, providers, the tracker and the service, and injects them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bot.config import Settings
from bot.lifecycle import Lifecycle
from bot.polling import PollPlanner
from bot.ports import ReplyFactory
from bot.service import AnimationService
from bot.tracker import Tracker
from providers.base import Provider
from providers.http import RetryPolicy
from providers.router import Router
from storage.db import Database
from storage.jobs import JobStore
from storage.ledger import Ledger

log = logging.getLogger(__name__)


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, *, policy: RetryPolicy | None = None
) -> list[Provider]:
    """Providers in the configured failover order; keys come from settings and go nowhere else.

    `policy` overrides the HTTP retry policy (tests shorten backoff and timeouts with it); None = the default.
    """
    built: list[Provider] = []
    for name in settings.provider_order():
        if name == "fal" and settings.fal_key:
            from providers.fal import FalProvider

            built.append(
                FalProvider(
                    session,
                    api_key=settings.fal_key.get_secret_value(),
                    base_url=settings.fal_base_url,
                    jwks_url=settings.fal_jwks_url,
                    policy=policy,
                )
            )
        elif name == "pixazo" and settings.pixazo_api_key:
            from providers.pixazo import PixazoProvider

            built.append(
                PixazoProvider(
                    session,
                    api_key=settings.pixazo_api_key.get_secret_value(),
                    base_url=settings.pixazo_base_url,
                    policy=policy,
                )
            )
        elif name == "wavespeed" and settings.wavespeed_api_key:
            from providers.wavespeed import WaveSpeedProvider

            built.append(
                WaveSpeedProvider(
                    session,
                    api_key=settings.wavespeed_api_key.get_secret_value(),
                    base_url=settings.wavespeed_base_url,
                    policy=policy,
                )
            )
        elif name == "preview":
            from providers.preview import PreviewProvider

            built.append(PreviewProvider(settings.data_dir / "preview", queue_seconds=settings.preview_queue_seconds))
    return built


@dataclass
class App:
    settings: Settings
    db: Database
    session: aiohttp.ClientSession
    ledger: Ledger
    jobs: JobStore
    router: Router
    lifecycle: Lifecycle
    tracker: Tracker
    service: AnimationService
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def build(
        cls,
        settings: Settings,
        *,
        clock: Callable[[], float] | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> App:
        """Wire everything from settings. `clock` and `retry_policy` exist for tests and benchmarks only."""
        import time

        now = clock or time.time
        db = await Database.open(settings.database_url)
        session = aiohttp.ClientSession()
        ledger = Ledger(db, starting_credits=settings.starting_credits, clock=now)
        jobs = JobStore(db, clock=now)
        router = Router(build_providers(settings, session, policy=retry_policy))
        lifecycle = Lifecycle(
            settings=settings,
            ledger=ledger,
            jobs=jobs,
            router=router,
            planner=PollPlanner(jobs),
            session=session,
            replies={},
            clock=now,
        )
        tracker = Tracker(lifecycle.step)
        service = AnimationService(
            settings=settings, ledger=ledger, jobs=jobs, router=router, tracker=tracker, clock=now
        )
        return cls(settings, db, session, ledger, jobs, router, lifecycle, tracker, service)

    def add_replies(self, platform: str, factory: ReplyFactory) -> None:
        """Front-ends register how to answer on their platform before `start()` resumes old jobs."""
        self.lifecycle.replies[platform] = factory

    async def start(self) -> int:
        """Start tracking and resume jobs left unfinished by an earlier run; returns how many."""
        self._task = asyncio.create_task(self.tracker.run(), name="tracker")
        resumed = await self.service.resume()
        if resumed:
            log.info("resuming %d unfinished job(s)", resumed)
        return resumed

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop tracking (letting calls in flight land for up to `grace` s), then release everything."""
        await self.tracker.stop(grace)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.session.close()
        await self.db.close()
