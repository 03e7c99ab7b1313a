"""A faithful loopback fake of fal's queue API (PROTOCOLS §2-§3, seeds 000, 001, 004).

    async with FakeFal.running() as fake:
        provider = FalProvider(session, api_key=fake.api_key, base_url=fake.base_url, jwks_url=fake.jwks_url)

Jobs advance by hand (`fake.start(id)`, `fake.complete(id)`, `fake.fail(id, "reason")`) or by a schedule:
`FakeFal(schedule=lambda sub: Plan(queue_seconds=2, processing_seconds=30))`, evaluated once per submit; the
state is computed from a monotonic clock whenever a request asks. Faults: `fake.faults.add("status",
HttpError(503), times=3)` (see fal_faults). Every request is in `fake.requests` / `fake.calls(route)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.clips import tiny_mp4
from tests.fakes.fal_faults import FaultPlan
from tests.fakes.fal_jobs import (
    COMPLETED,
    IN_PROGRESS,
    IN_QUEUE,
    Failure,
    FakeJob,
    Plan,
    Schedule,
    Submission,
    log_entry,
    owner_app,
)
from tests.fakes.fal_schema import MODELS, validate
from tests.fakes.fal_webhooks import Delivery, Signer, WebhookFaults, WebhookSender

QUEUE_ROUTES = ("submit", "status", "result", "cancel", "other")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    route: str  # submit | status | result | cancel | file | jwks | other
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    json: Any  # the parsed body, or None when it was empty or not JSON


class FakeFal:
    """fal's queue, CDN files and JWKS on one loopback port."""

    def __init__(
        self,
        *,
        api_key: str = "fal-test-key-7d1c9e0a:5be3f2a4c8d04a6b",
        user_id: str = "fake-fal-user",
        schedule: Schedule | None = None,
        validate_at_submit: bool = False,
        minimal_webhook_reply: bool = False,
        honour_cancel_in_progress: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        webhook_retry_delays: tuple[float, ...] = (0.05, 0.2),
    ) -> None:
        self.api_key = api_key
        self.user_id = user_id
        self.schedule = schedule
        # Real fal enqueues any JSON and the app validates it when it runs: the job then completes with an
        # error and GET result answers 422. validate_at_submit=True answers the 422 to the submit instead.
        self.validate_at_submit = validate_at_submit
        # fal's webhook docs show a submit reply of only {request_id, gateway_request_id}.
        self.minimal_webhook_reply = minimal_webhook_reply
        self.honour_cancel_in_progress = honour_cancel_in_progress
        self.clock = clock
        self.wall_clock = wall_clock
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, FakeJob] = {}
        self.files: dict[str, bytes] = {}
        self.faults = FaultPlan()
        self.webhook_faults = WebhookFaults()
        self.deliveries: list[Delivery] = []
        self.signer = Signer()
        self._sender = WebhookSender(self.signer, user_id, wall_clock, webhook_retry_delays)
        self._delivered = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self.app = web.Application(middlewares=[self._middleware])
        self.app.router.add_get("/.well-known/jwks.json", self._jwks, name="jwks")
        self.app.router.add_get("/files/{name}", self._file, name="file")
        self.app.router.add_get("/{owner}/{app}/requests/{rid}/status", self._status, name="status")
        self.app.router.add_put("/{owner}/{app}/requests/{rid}/cancel", self._cancel, name="cancel")
        self.app.router.add_get("/{owner}/{app}/requests/{rid}", self._result, name="result")
        self.app.router.add_post("/{model:.+}", self._submit, name="submit")
        self.app.router.add_route("*", "/{tail:.*}", self._not_found, name="other")

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **options: Any) -> AsyncIterator[FakeFal]:
        """Serve a new fake on 127.0.0.1 at a free port for the duration of the block."""
        fake = cls(**options)
        await fake.start_server()
        try:
            yield fake
        finally:
            await fake.stop_server()

    async def start_server(self) -> None:
        self._session = aiohttp.ClientSession()
        # A short shutdown grace: handlers still sleeping in a Delay fault are cancelled, not awaited.
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"

    async def stop_server(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the fake is not running")
        return self._base_url

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    # -- what tests read ------------------------------------------------------------------------

    def calls(self, route: str) -> list[RecordedRequest]:
        """The recorded requests that reached `route` (faulted ones included)."""
        return [r for r in self.requests if r.route == route]

    def job(self, request_id: str) -> FakeJob:
        return self.jobs[request_id]

    def state(self, request_id: str) -> str:
        return self.jobs[request_id].state(self.clock())

    async def wait_deliveries(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Wait (on an event, not a timer) until at least `count` webhook deliveries were made."""
        async with self._delivered:
            await asyncio.wait_for(self._delivered.wait_for(lambda: len(self.deliveries) >= count), timeout)
        return list(self.deliveries)

    # -- manual progression ---------------------------------------------------------------------

    def start(self, request_id: str) -> None:
        """Move a queued job to IN_PROGRESS now."""
        job = self.jobs[request_id]
        if job.state(self.clock()) == IN_QUEUE:
            job.started = self.clock()

    def complete(self, request_id: str, *, content: bytes | None = None, output: dict[str, Any] | None = None) -> None:
        """Finish a job with a video (`content`, default a tiny MP4) or with a literal `output` body."""
        job = self._finish(request_id)
        job.failure = None
        job.output = output if output is not None else self.video_output(content)
        self._after_finish(job)

    def drop_file(self, request_id: str) -> None:
        """Delete a finished job's result file, so its URL answers 404 (an expired fal CDN link)."""
        url = str((self.jobs[request_id].output or {}).get("video", {}).get("url", ""))
        self.files.pop(url.rsplit("/", 1)[-1], None)

    def fail(
        self,
        request_id: str,
        error: str,
        *,
        error_type: str | None = None,
        http_status: int | None = None,
        loc: tuple[str, ...] = ("body",),
    ) -> None:
        """Finish a job COMPLETED-with-error: a model error (422 detail list) or, with error_type, an infra one."""
        job = self._finish(request_id)
        if error_type is None:
            job.failure = Failure.model(error, loc=loc)
        else:
            job.failure = Failure.infrastructure(error, error_type, http_status)
        self._after_finish(job)

    def add_log(self, request_id: str, message: str, timestamp: Any = None, level: str = "INFO") -> None:
        """Append a runner log line; `timestamp` may be epoch seconds or any literal fal might send."""
        self.jobs[request_id].extra_logs.append(log_entry(message, timestamp, level))

    def video_output(self, content: bytes | None = None) -> dict[str, Any]:
        """Store a result file and return the model output that points at it."""
        data = tiny_mp4() if content is None else content
        name = f"{uuid.uuid4().hex[:12]}_output.mp4"
        self.files[name] = data
        video = {
            "url": f"{self.base_url}/files/{name}",
            "content_type": "application/octet-stream",  # what fal really sends (seed 001)
            "file_name": "output.mp4",
            "file_size": len(data),
        }
        return {"video": video}

    def _finish(self, request_id: str) -> FakeJob:
        job = self.jobs[request_id]
        now = self.clock()
        if job.started is None or job.started > now:
            job.started = now
        job.completed = now
        return job

    def _after_finish(self, job: FakeJob) -> None:
        if job.webhook_url:
            self._spawn(self._send_webhook(job))

    # -- webhooks -------------------------------------------------------------------------------

    def rotate_signing_key(self, *, keep_old: bool = True) -> None:
        """Start signing with a new key (the JWKS changes accordingly)."""
        self.signer.rotate(keep_old=keep_old)

    async def deliver_due_webhooks(self) -> None:
        """Send callbacks for scheduled jobs that have finished by `clock()` (for tests with a fake clock)."""
        now = self.clock()
        for job in list(self.jobs.values()):
            if job.webhook_url and not job.webhook_sent and job.state(now) == COMPLETED:
                await self._send_webhook(job)

    async def resend_webhook(self, request_id: str) -> None:
        """Deliver a job's callback again (fal's retry policy may do this)."""
        job = self.jobs[request_id]
        job.webhook_sent = False
        await self._send_webhook(job)

    async def _send_webhook(self, job: FakeJob) -> None:
        if job.webhook_sent or not job.webhook_url or self._session is None:
            return
        job.webhook_sent = True
        sent = await self._sender.send(
            self._session, job.webhook_url, job.request_id, job.webhook_payload(), self.webhook_faults
        )
        async with self._delivered:
            self.deliveries.extend(sent)
            self._delivered.notify_all()

    async def _webhook_when_done(self, job: FakeJob) -> None:
        while job.completed is None or self.clock() < job.completed:
            remaining = job.completed - self.clock() if job.completed is not None else 1.0
            await asyncio.sleep(max(0.005, remaining))
        await self._send_webhook(job)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- HTTP -----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name or "other"
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.requests.append(
            RecordedRequest(
                route, request.method, request.path, dict(request.query), CIMultiDict(request.headers), raw, parsed
            )
        )
        fault = self.faults.take(route)
        if fault is not None:
            reply = await fault.apply(request)
            if reply is not None:
                return reply
        if route in QUEUE_ROUTES and request.headers.get("Authorization") != f"Key {self.api_key}":
            detail = "Missing authorization header" if "Authorization" not in request.headers else "Invalid key"
            return web.json_response({"detail": detail}, status=401)
        return await handler(request)

    def _urls(self, job: FakeJob) -> dict[str, str]:
        root = f"{self.base_url}/{job.app_path}/requests/{job.request_id}"
        return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}

    def _find(self, request: web.Request) -> FakeJob | None:
        job = self.jobs.get(request.match_info["rid"])
        app_path = f"{request.match_info['owner']}/{request.match_info['app']}"
        return job if job is not None and job.app_path == app_path else None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if model not in MODELS:
            return web.json_response({"detail": f"Application '{model}' not found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            error = {"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}
            return web.json_response({"detail": [error]}, status=422)
        errors = validate(model, body)
        if errors and self.validate_at_submit:
            return web.json_response({"detail": errors}, status=422)
        now = self.clock()
        request_id = str(uuid.uuid4())
        webhook = request.query.get("fal_webhook") or None
        job = FakeJob(request_id, model, owner_app(model), body, webhook, len(self.jobs), now, self.wall_clock() - now)
        self.jobs[request_id] = job
        if errors:
            # The runner rejects the input as soon as it picks the job up.
            job.started = job.completed = now
            job.failure = Failure.validation(errors)
        elif self.schedule is not None:
            self._apply_plan(job, self.schedule(Submission(request_id, model, body, job.index)))
        if webhook and job.completed is not None:
            self._spawn(self._webhook_when_done(job))
        reply: dict[str, Any] = {"request_id": request_id, **self._urls(job), "queue_position": self._position(job)}
        if webhook and self.minimal_webhook_reply:
            reply = {"request_id": request_id, "gateway_request_id": request_id}
        return web.json_response(reply, headers={"x-fal-request-id": request_id})

    def _apply_plan(self, job: FakeJob, plan: Plan | tuple[float, float] | None) -> None:
        if plan is None:
            return
        if isinstance(plan, tuple):
            plan = Plan(queue_seconds=plan[0], processing_seconds=plan[1])
        job.started = job.submitted + plan.queue_seconds
        job.completed = job.started + plan.processing_seconds
        if plan.error is None:
            job.output = self.video_output(plan.content)
        elif plan.error_type is None:
            job.failure = Failure.model(plan.error)
        else:
            job.failure = Failure.infrastructure(plan.error, plan.error_type)

    def _position(self, job: FakeJob) -> int:
        now = self.clock()
        return sum(
            1
            for other in self.jobs.values()
            if other.index < job.index and other.app_path == job.app_path and other.state(now) == IN_QUEUE
        )

    async def _status(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        with_logs = request.query.get("logs", "").lower() in ("1", "true")
        body = job.status_body(self.clock(), self._urls(job), self._position(job), with_logs)
        return web.json_response(body, status=200 if body["status"] == COMPLETED else 202)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if job.state(self.clock()) != COMPLETED:
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if job.failure is not None:
            headers = {"X-Fal-Error-Type": job.failure.error_type} if job.failure.error_type else {}
            return web.json_response(job.failure.body, status=job.failure.http_status, headers=headers)
        return web.json_response(job.output)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request)
        if job is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        state = job.state(self.clock())
        if state == COMPLETED:
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job.cancel_requested = True
        if state == IN_QUEUE or (state == IN_PROGRESS and self.honour_cancel_in_progress):
            self._finish(job.request_id)
            job.failure, job.output = Failure.cancelled(), None
            self._after_finish(job)
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.json_response({"detail": "File not found"}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.signer.jwks())

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"detail": "Not Found"}, status=404)
