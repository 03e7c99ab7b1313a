"""Generic fault injection and request recording for the Pixazo and WaveSpeed loopback fakes.

Faults are queued per route name (the name each fake gives its routes, e.g. "submit", "status", "files")
and consumed one per request, so `plan.add("status", reply(503), times=3)` makes the next three status
requests fail and the fourth succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.clips import tiny_mp4

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    route: str
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]  # case-insensitive, as sent
    body: bytes
    json: Any  # the parsed body, None when it was not JSON


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or around) the normal handler for one request."""

    kind: str  # reply | slow | reset | malformed | oversized
    status: int = 200
    body: Any = None  # JSON-encoded unless `raw` is given
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    size: int = 0
    after_handler: bool = False  # run the real handler first (its side effects happen), then misbehave


def reply(
    status: int, body: Any = None, *, retry_after: float | str | None = None, headers: Mapping[str, str] | None = None
) -> Fault:
    """Answer with this status and JSON body instead of the handler (429/5xx/401/402/404 …)."""
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(retry_after)
    return Fault(
        "reply", status=status, body=body if body is not None else {"message": f"injected {status}"}, headers=extra
    )


def slow(seconds: float) -> Fault:
    """Hold the request this long before handling it (ends early when the fake stops)."""
    return Fault("slow", delay=seconds)


def reset(*, after_handler: bool = False) -> Fault:
    """Drop the connection without an answer; with after_handler the request took effect first."""
    return Fault("reset", after_handler=after_handler)


def malformed(status: int = 200, *, after_handler: bool = False) -> Fault:
    """Answer with truncated JSON."""
    return Fault("malformed", status=status, after_handler=after_handler)


def not_mp4() -> Fault:
    """A 200 'video' that is really an HTML error page."""
    return Fault("reply", raw=b"<html><body>Access denied</body></html>", content_type="video/mp4")


def oversized(size: int) -> Fault:
    """A 200 video of `size` bytes: a real MP4 followed by padding, streamed."""
    return Fault("oversized", size=size)


class FaultPlan:
    """Faults queued per route, consumed in order."""

    def __init__(self) -> None:
        self._queues: defaultdict[str, deque[Fault]] = defaultdict(deque)

    def add(self, route: str, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests on `route`."""
        self._queues[route].extend([fault] * times)

    def take(self, route: str) -> Fault | None:
        """The next fault for `route`, if any."""
        queue = self._queues.get(route)
        return queue.popleft() if queue else None

    def pending(self, route: str) -> int:
        """How many faults are still queued for `route`."""
        return len(self._queues.get(route, ()))

    def clear(self) -> None:
        """Forget every queued fault."""
        self._queues.clear()


def middleware(plan: FaultPlan, record: list[RecordedRequest], stopping: asyncio.Event) -> Any:
    """An aiohttp middleware that records every request and applies the plan's faults."""

    @web.middleware
    async def apply(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()  # cached by aiohttp, so handlers can read it again
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        route = request.match_info.route.name or ""
        record.append(
            RecordedRequest(
                route=route,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                json=parsed,
            )
        )
        fault = plan.take(route)
        if fault is None:
            return await handler(request)
        if fault.kind == "slow":
            await _wait(stopping, fault.delay)
            return await handler(request)
        if fault.after_handler:
            await handler(request)
        return await _misbehave(request, fault)

    return apply


async def _misbehave(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=204)  # never reaches the client
    if fault.kind == "malformed":
        return web.Response(status=fault.status, text='{"code": 200, "data": {"id": ', content_type="application/json")
    if fault.kind == "oversized":
        return await _stream_oversized(request, fault.size)
    raw = fault.raw if fault.raw is not None else json.dumps(fault.body).encode()
    return web.Response(status=fault.status, body=raw, content_type=fault.content_type, headers=fault.headers)


async def _stream_oversized(request: web.Request, size: int) -> web.StreamResponse:
    head = tiny_mp4()
    response = web.StreamResponse(status=200, headers={"Content-Type": "video/mp4"})
    response.content_length = max(size, len(head))
    await response.prepare(request)
    left, chunk = response.content_length - len(head), b"\0" * 65536
    try:
        await response.write(head)
        while left > 0:
            await response.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up on the size, which is what an oversized test wants
    return response


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
