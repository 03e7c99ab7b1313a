"""A real App (SQLite file, tracker, providers) wired for tests, with a Reply that records what a member sees."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.app import App
from bot.config import Settings
from bot.ports import AnimateRequest, Delivery, Progress, Requester
from bot.service import Submitted
from providers.base import JobKind
from storage.jobs import Job

PLATFORM = "test"


@dataclass
class Seen:
    """Everything one job showed its member."""

    progress: list[Progress] = field(default_factory=list)
    delivered: Delivery | None = None
    delivered_text: str | None = None
    failed: list[str] = field(default_factory=list)


class ReplyLog:
    """Records replies per job; `fail_deliveries` makes the platform refuse videos."""

    def __init__(self) -> None:
        self.jobs: dict[str, Seen] = {}
        self.deliver_error: Exception | None = None

    def seen(self, job_id: str) -> Seen:
        return self.jobs.setdefault(job_id, Seen())

    def factory(self, target: Mapping[str, Any]) -> _Reply:
        return _Reply(self)


class _Reply:
    def __init__(self, log: ReplyLog) -> None:
        self.log = log

    async def progress(self, job: Job, update: Progress) -> None:
        self.log.seen(job.id).progress.append(update)

    async def deliver(self, job: Job, video: Delivery, text: str) -> None:
        if self.log.deliver_error is not None:
            raise self.log.deliver_error
        seen = self.log.seen(job.id)
        seen.delivered, seen.delivered_text = video, text

    async def fail(self, job: Job, text: str) -> None:
        self.log.seen(job.id).failed.append(text)


@dataclass
class Harness:
    app: App
    replies: ReplyLog

    async def animate(
        self, *, user: str = "test:alice", image: bytes | None = None, prompt: str = "the sea moves", **kw: Any
    ) -> Submitted:
        kind = JobKind.IMAGE_TO_VIDEO if image is not None else JobKind.TEXT_TO_VIDEO
        return await self.app.service.animate(
            AnimateRequest(
                requester=Requester(user_id=user, display=user),
                kind=kw.pop("kind", kind),
                prompt=prompt,
                reply_target={"platform": PLATFORM},
                image_bytes=image,
                **kw,
            )
        )

    async def finish(self, job_id: str) -> Job:
        """Wait until the job is settled and its member told; return its final record."""
        await self.app.tracker.wait_finished(job_id)
        job = await self.app.jobs.get(job_id)
        assert job is not None
        return job

    async def balance(self, user: str = "test:alice") -> int:
        return await self.app.service.balance(user)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: no .env, a fresh SQLite file, an ephemeral web port, fast preview."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/animabot.db",
        "data_dir": tmp_path / "data",
        "web_port": 0,
        "preview_queue_seconds": 0.2,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Harness]:
    app = await App.build(settings)
    replies = ReplyLog()
    app.add_replies(PLATFORM, replies.factory)
    await app.start()
    try:
        yield Harness(app, replies)
    finally:
        await app.close(grace=0)  # abrupt, like a crash: tests of resume rely on steps being cut off
