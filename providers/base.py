"""The provider-neutral vocabulary: what a job asks for, how it is tracked, what it yields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class JobKind(StrEnum):
    IMAGE_TO_VIDEO = "image-to-video"
    TEXT_TO_VIDEO = "text-to-video"


class JobState(StrEnum):
    """A provider job's state, normalised across fal, Pixazo and WaveSpeed."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)


@dataclass(frozen=True)
class ImageInput:
    """A validated input image: its bytes, and a URL a provider may fetch, if one exists.

    `public_url` is only ever a URL that is safe to hand out (a Discord attachment, or the bot's own
    expiring image link). Telegram file URLs embed the bot token and must never be put here.
    """

    data: bytes
    mime: str
    public_url: str | None = None

    def data_uri(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class JobSpec:
    """Everything a provider needs to start one generation."""

    kind: JobKind
    prompt: str
    image: ImageInput | None = None
    resolution: str = "512P"  # canonical spelling; adapters translate ("512p" for WaveSpeed)
    duration_s: int = 5
    steps: int | None = None
    acceleration: str | None = None
    aspect_ratio: str | None = None  # text-to-video only: 3:2, 1:1, 2:3
    webhook_url: str | None = None  # set by the tracker when push delivery is available


@dataclass(frozen=True)
class JobHandle:
    """Plain data naming a job at a provider; storage persists it as JSON."""

    provider: str
    request_id: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"provider": self.provider, "request_id": self.request_id, "extra": dict(self.extra)})

    @classmethod
    def from_json(cls, text: str) -> JobHandle:
        raw = json.loads(text)
        return cls(provider=raw["provider"], request_id=raw["request_id"], extra=dict(raw.get("extra") or {}))


@dataclass(frozen=True)
class VideoResult:
    url: str
    size: int | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class JobStatus:
    """One observation of a job. `charged` matters only for failures (Pixazo ERROR is not billed)."""

    state: JobState
    queue_position: int | None = None
    logs: tuple[str, ...] = ()
    error: str | None = None
    charged: bool = True
    started_at: float | None = None  # epoch seconds the provider began processing, when it says so
    finished_at: float | None = None  # epoch seconds it finished (terminal states), on the provider's clock
    video: VideoResult | None = None  # some providers return outputs with the status


@dataclass(frozen=True)
class WebhookEvent:
    """A provider callback after verification. Unsigned ones (Pixazo) are hints to confirm by a status call."""

    request_id: str
    status: JobStatus | None
    signed: bool


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do and what it costs, so the service can quote before spending."""

    kinds: frozenset[JobKind]
    resolutions: tuple[str, ...]
    durations: tuple[int, ...]
    prices_usd_micros: Mapping[tuple[JobKind, str, int], int]  # (kind, resolution, seconds) -> micro-USD
    accelerations: tuple[str, ...] = ()
    steps_range: tuple[int, int] | None = None
    push: bool = False  # can notify a webhook when the job ends

    def supports(self, spec: JobSpec) -> bool:
        return self.refusal(spec) is None

    def refusal(self, spec: JobSpec) -> str | None:
        """Why this provider cannot make `spec`, in words fit for a member; None if it can."""
        if spec.kind not in self.kinds:
            return f"no {spec.kind.value}"
        if spec.kind is JobKind.IMAGE_TO_VIDEO and spec.resolution not in self.resolutions:
            return f"resolution must be one of {', '.join(self.resolutions)}"
        if spec.steps is not None and self.steps_range is not None:
            low, high = self.steps_range
            if not low <= spec.steps <= high:
                return f"steps must be from {low} to {high}"
        # A provider without the knob (no range, no list) ignores it rather than refusing the job.
        if spec.acceleration is not None and self.accelerations and spec.acceleration not in self.accelerations:
            return f"acceleration must be one of {', '.join(self.accelerations)}"
        if (spec.kind, price_resolution(spec), spec.duration_s) not in self.prices_usd_micros:
            return f"no {spec.duration_s}s clips"
        return None

    def price_usd_micros(self, spec: JobSpec) -> int:
        return self.prices_usd_micros[(spec.kind, price_resolution(spec), spec.duration_s)]


def price_resolution(spec: JobSpec) -> str:
    """Text-to-video is priced per clip regardless of resolution (seed 004)."""
    return "any" if spec.kind is JobKind.TEXT_TO_VIDEO else spec.resolution


def usd(amount: str) -> int:
    """Micro-USD from a decimal string, exact: usd("0.20") == 200_000."""
    whole, _, frac = amount.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


@runtime_checkable
class Provider(Protocol):
    """Submit, observe, fetch and cancel one kind of hosted video job."""

    name: str
    capabilities: Capabilities

    async def submit(self, spec: JobSpec) -> JobHandle: ...

    async def status(self, handle: JobHandle) -> JobStatus: ...

    async def result(self, handle: JobHandle) -> VideoResult: ...

    async def cancel(self, handle: JobHandle) -> bool: ...

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The callback's content if it is authentic (or unsigned by design), None if forged or stale."""
        ...


def video_of(provider: str, status: JobStatus) -> VideoResult:
    """The clip from a status that carries its outputs (Pixazo, WaveSpeed), or the error that says why not."""
    from providers.errors import JobRejected, ResultUnusable

    if status.state is JobState.COMPLETED and status.video is not None:
        return status.video
    if status.state is JobState.FAILED:
        raise JobRejected(provider, status.error or "generation failed", charged=status.charged)
    if status.state is JobState.COMPLETED:
        raise ResultUnusable(provider, "the provider reported the job complete without a video")
    raise ResultUnusable(provider, f"the job is not finished ({status.state})")
