"""What front-ends hand the service, and the small Reply port they implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from providers.base import JobKind
from storage.jobs import Job, Phase


@dataclass(frozen=True)
class Requester:
    """A member as the service sees them: "<platform>:<id>", plus the community they asked in."""

    user_id: str
    display: str
    community_id: str | None = None


@dataclass(frozen=True)
class AnimateRequest:
    requester: Requester
    kind: JobKind
    prompt: str
    reply_target: Mapping[str, Any]  # JSON-able; must hold "platform" so a restart can rebuild the Reply
    image_bytes: bytes | None = None
    image_public_url: str | None = None  # only a URL safe to share (never a Telegram file URL)
    resolution: str = "512P"
    duration_s: int = 5
    steps: int | None = None
    acceleration: str | None = None
    aspect_ratio: str | None = None
    provider: str | None = None


@dataclass(frozen=True)
class Progress:
    phase: Phase
    queue_position: int | None
    elapsed_s: float
    provider: str | None


@dataclass(frozen=True)
class Delivery:
    path: Path
    width: int
    height: int
    duration_s: float
    size_bytes: int
    thumbnail: Path | None


class Reply(Protocol):
    """How the service talks back to a member, whatever the platform."""

    async def progress(self, job: Job, update: Progress) -> None: ...

    async def deliver(self, job: Job, video: Delivery, text: str) -> None: ...

    async def fail(self, job: Job, text: str) -> None: ...


class DeliveryFailed(Exception):
    """The platform refused the video for good (chat gone, bot blocked); the member gets a refund."""


ReplyFactory = Callable[[Mapping[str, Any]], Reply]
