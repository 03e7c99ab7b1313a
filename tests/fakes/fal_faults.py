"""Fault injection for the fake fal server: per-route queues of misbehaviours, each used a set number of times.

Routes: "submit", "status", "result", "cancel", "file", "jwks". A fault either answers in place of the real
handler (an error reply, garbage, a dropped connection) or delays and then lets the real handler answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ROUTES = ("submit", "status", "result", "cancel", "file", "jwks")


class Fault:
    """One misbehaviour. `apply` returns the reply to send instead of the real one, or None to go on."""

    async def apply(self, request: web.Request) -> web.StreamResponse | None:
        raise NotImplementedError


@dataclass
class HttpError(Fault):
    """An HTTP error with an optional JSON body and headers (e.g. 429 with Retry-After, a bare 502)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    async def apply(self, request: web.Request) -> web.StreamResponse:
        if self.body is None:
            return web.Response(status=self.status, text=f"{self.status} error", headers=self.headers)
        return web.json_response(self.body, status=self.status, headers=self.headers)


@dataclass
class InfraError(Fault):
    """fal's infrastructure error shape: {"detail", "error_type"} plus the X-Fal-Error-Type header."""

    status: int = 503
    error_type: str = "runner_scheduling_failure"
    detail: str = "No runner could be scheduled for the request"
    retryable: bool | None = None

    async def apply(self, request: web.Request) -> web.StreamResponse:
        headers = {"X-Fal-Error-Type": self.error_type}
        if self.retryable is not None:
            headers["X-Fal-Retryable"] = "true" if self.retryable else "false"
        return web.json_response(
            {"detail": self.detail, "error_type": self.error_type}, status=self.status, headers=headers
        )


@dataclass
class Delay(Fault):
    """Answer normally, but only after `seconds` (long enough and the client times out)."""

    seconds: float

    async def apply(self, request: web.Request) -> None:
        await asyncio.sleep(self.seconds)


@dataclass
class Reset(Fault):
    """Drop the connection without answering, as a crashed proxy would."""

    async def apply(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never reaches the client: the transport is gone


@dataclass
class Malformed(Fault):
    """A success status with a body that is not JSON."""

    status: int = 200
    text: str = '{"status": "IN_PROG'

    async def apply(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=self.status, text=self.text, content_type="application/json")


def rate_limited(retry_after: float | str = 2) -> HttpError:
    """A 429 as fal's gateway sends it when the account's concurrency limit is hit."""
    return HttpError(
        429,
        body={"detail": "Rate limit exceeded", "error_type": "rate_limited"},
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(status: int = 503) -> HttpError:
    """A plain gateway 5xx without fal's JSON shape."""
    return HttpError(status, body={"detail": f"Upstream error {status}"})


class FaultPlan:
    """Per-route FIFO of faults; each entry is used `times` times, then the next one applies."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[list[Any]]] = {route: deque() for route in ROUTES}

    def add(self, route: str, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests on `route`."""
        if route not in self._queues:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queues[route].append([fault, times])

    def take(self, route: str) -> Fault | None:
        """The fault for this request, if one is pending."""
        queue = self._queues.get(route)
        if not queue:
            return None
        entry = queue[0]
        entry[1] -= 1
        if entry[1] <= 0:
            queue.popleft()
        fault: Fault = entry[0]
        return fault

    def pending(self, route: str) -> int:
        """How many faulty replies remain queued for `route`."""
        return sum(times for _, times in self._queues.get(route, ()))

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()
