"""Jobs inside the fake fal queue: a lazy state machine read from a monotonic clock at request time.

A job is IN_QUEUE until `started`, IN_PROGRESS until `completed`, then COMPLETED (with an error when it
failed). Scheduled jobs get both instants at submit; manual jobs get them from `FakeFal.start/complete/fail`.
Nothing ticks in the background, so hundreds of jobs cost nothing between requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"

# HTTP status fal gives an infrastructure error type (PROTOCOLS §2).
ERROR_TYPE_STATUS = {
    "request_timeout": 504,
    "startup_timeout": 504,
    "runner_scheduling_failure": 503,
    "runner_connection_timeout": 503,
    "runner_disconnected": 503,
    "runner_connection_refused": 503,
    "runner_connection_error": 503,
    "runner_incomplete_response": 502,
    "runner_server_error": 500,
    "client_disconnected": 499,
    "client_cancelled": 499,
    "bad_request": 400,
    "internal_error": 500,
}


@dataclass(frozen=True)
class Submission:
    """What a schedule callable sees of one submit."""

    request_id: str
    model_id: str
    body: Any
    index: int  # 0-based order among all submits to this fake


@dataclass(frozen=True)
class Plan:
    """How a scheduled job unfolds: seconds queued, seconds processing, and how it ends."""

    queue_seconds: float = 0.0
    processing_seconds: float = 0.0
    error: str | None = None  # end COMPLETED-with-error instead of producing a video
    error_type: str | None = None  # an infrastructure error type (e.g. runner_server_error); None = model error
    content: bytes | None = None  # the file to serve; None = tests.fakes.clips.tiny_mp4()


Schedule = Callable[[Submission], "Plan | tuple[float, float] | None"]


@dataclass(frozen=True)
class Failure:
    """How a failed job shows: the status `error` text, and what GET result (and the webhook) carry."""

    error: str
    error_type: str | None
    http_status: int
    body: dict[str, Any]

    @classmethod
    def validation(cls, errors: list[dict[str, Any]]) -> Failure:
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"][1:])
        text = f"{first['msg']} ({where})" if where else str(first["msg"])
        return cls(text, None, 422, {"detail": errors})

    @classmethod
    def model(cls, error: str, *, loc: tuple[str, ...] = ("body",), kind: str = "generation_error") -> Failure:
        return cls(error, None, 422, {"detail": [{"loc": list(loc), "msg": error, "type": kind}]})

    @classmethod
    def infrastructure(cls, error: str, error_type: str, status: int | None = None) -> Failure:
        http_status = status or ERROR_TYPE_STATUS.get(error_type, 500)
        return cls(error, error_type, http_status, {"detail": error, "error_type": error_type})

    @classmethod
    def cancelled(cls) -> Failure:
        return cls.infrastructure("Request was cancelled", "client_cancelled")


@dataclass
class FakeJob:
    request_id: str
    model_id: str
    app_path: str  # owner/app: where status, result and cancel live
    body: Any
    webhook_url: str | None
    index: int
    submitted: float  # monotonic
    wall_offset: float  # wall = monotonic + wall_offset, fixed at submit
    started: float | None = None
    completed: float | None = None
    failure: Failure | None = None
    output: dict[str, Any] | None = None
    extra_logs: list[dict[str, Any]] = field(default_factory=list)
    cancel_requested: bool = False
    webhook_sent: bool = False

    def state(self, now: float) -> str:
        if self.completed is not None and now >= self.completed:
            return COMPLETED
        if self.started is not None and now >= self.started:
            return IN_PROGRESS
        return IN_QUEUE

    def wall(self, mono: float) -> float:
        return mono + self.wall_offset

    def logs(self, now: float) -> list[dict[str, Any]]:
        """Runner logs visible at `now`: a start line, one line per second of work, the custom ones, an end."""
        if self.started is None or now < self.started:
            return []
        done = self.completed is not None and now >= self.completed
        until = self.completed if done and self.completed is not None else now
        entries = [log_entry("Loading Kandinsky 5 pipeline", self.wall(self.started))]
        for second in range(1, min(int(until - self.started), 20) + 1):
            entries.append(log_entry(f"Denoising: {second}s elapsed", self.wall(self.started + second)))
        entries.extend(self.extra_logs)
        if done and self.completed is not None:
            end = "Generation failed" if self.failure else "Generation finished"
            entries.append(log_entry(end, self.wall(self.completed), "ERROR" if self.failure else "INFO"))
        return entries

    def status_body(self, now: float, urls: dict[str, str], position: int, with_logs: bool) -> dict[str, Any]:
        """The JSON fal's status endpoint returns for this job at `now`."""
        state = self.state(now)
        body: dict[str, Any] = {"status": state, "request_id": self.request_id, **urls}
        if state == IN_QUEUE:
            body["queue_position"] = position
            return body
        body["logs"] = self.logs(now) if with_logs else None
        if state == COMPLETED:
            started = self.started if self.started is not None else now
            finished = self.completed if self.completed is not None else now
            body["metrics"] = {"inference_time": round(finished - started, 3)}
            if self.failure is not None:
                body["error"] = self.failure.error
                if self.failure.error_type:
                    body["error_type"] = self.failure.error_type
        return body

    def webhook_payload(self) -> dict[str, Any]:
        """The documented callback body for a finished job (PROTOCOLS §3)."""
        payload: dict[str, Any] = {"request_id": self.request_id, "gateway_request_id": self.request_id}
        if self.failure is not None:
            payload.update(
                status="ERROR", error=f"Invalid status code: {self.failure.http_status}", payload=self.failure.body
            )
        else:
            payload.update(status="OK", payload=self.output)
        return payload


def log_entry(message: str, wall: float | str | None, level: str = "INFO") -> dict[str, Any]:
    """A fal log line; a float time becomes fal's zone-less ISO timestamp (UTC)."""
    if isinstance(wall, float | int):
        stamp: Any = datetime.fromtimestamp(wall, UTC).replace(tzinfo=None).isoformat()
    else:
        stamp = wall
    return {"message": message, "level": level, "source": "USER", "timestamp": stamp}


def owner_app(model_id: str) -> str:
    """owner/app of a model id: the part fal keeps for status, result and cancel URLs."""
    parts = model_id.split("/")
    keep = 3 if parts[0] in ("workflows", "comfy") else 2
    return "/".join(parts[:keep])
