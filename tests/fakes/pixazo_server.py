"""A loopback Pixazo gateway for Kandinsky 5 Pro, written from seed 003 (PROTOCOLS §1e, §7) only.

Routes (fault names in brackets):
  POST /kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request  [submit]  202 {request_id, status, polling_url}
  GET  /v2/requests/status/{request_id}                     [status]  the documented status shape
  GET  /r2/v1/{request_id}/output.mp4                       [files]   the clip (public CDN: no key needed)

Usage:
    async with FakePixazo.running(api_key="k", schedule=lambda i: (0.5, 2.0)) as fake:
        fake.base_url; await fake.complete(job_id); fake.faults.add("status", reply(503), times=2)
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.clips import tiny_mp4
from tests.fakes.loopback import FakeJob, LoopbackFake, Phase

MODEL_ID = "kandinsky-5-0-pro-953"
SUBMIT_PATH = f"/{MODEL_ID}/v1/kandinsky-5-0-pro-request"
FIELDS = {"prompt", "image_url", "resolution", "duration", "num_inference_steps", "acceleration"}
RESOLUTIONS = {"256P", "512P", "1024P"}
ACCELERATIONS = {"regular", "fast", "ultra_fast"}
DURATION = re.compile(r"\d{1,2}s")  # "Accepts values like 3s, 5s, 10s"
# Azure API Management's stock answer to a missing or wrong subscription key.
APIM_401 = {
    "statusCode": 401,
    "message": "Access denied due to invalid subscription key. "
    "Make sure to provide a valid key for an active subscription.",
}

_STATUS = {
    Phase.QUEUED: "QUEUED",
    Phase.PROCESSING: "PROCESSING",
    Phase.COMPLETED: "COMPLETED",
    Phase.FAILED: "FAILED",
    Phase.ERROR: "ERROR",
}


def _iso_z(epoch: float) -> str:
    """`2026-05-22T13:17:32.110Z`, the style of `created_at` in the seed."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _plain(epoch: float) -> str:
    """`2026-05-22 13:19:23`, the style of `updated_at`/`completed_at` in the seed."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": "Bad Request", "message": message}, status=status)


class FakePixazo(LoopbackFake):
    """Pixazo's gateway, queue and CDN for one model."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_of_balance = False  # submit answers the documented 402
        self.model_disabled = False  # submit answers the documented 400 "Model not found"

    def add_routes(self, app: web.Application) -> None:
        """Register the gateway's routes."""
        app.router.add_post(SUBMIT_PATH, self._submit, name="submit")
        app.router.add_get("/v2/requests/status/{request_id}", self._status, name="status")
        app.router.add_get("/r2/v1/{request_id}/output.mp4", self._file, name="files")

    # -- manual progression -----------------------------------------------------------------------

    async def start(self, job_id: str) -> None:
        """QUEUED -> PROCESSING (a sync-mode callback is posted)."""
        await self.transition(job_id, Phase.PROCESSING)

    async def complete(self, job_id: str) -> None:
        """-> COMPLETED, with the terminal callback."""
        await self.transition(job_id, Phase.COMPLETED)

    async def fail(self, job_id: str, error: str = "Generation failed") -> None:
        """-> FAILED (charged), with the terminal callback."""
        await self.transition(job_id, Phase.FAILED, error=error)

    async def error(self, job_id: str, error: str = "Internal model error") -> None:
        """-> ERROR ("system error — not charged"), with the terminal callback."""
        await self.transition(job_id, Phase.ERROR, error=error)

    # -- shapes -----------------------------------------------------------------------------------

    def media_url(self, job: FakeJob) -> str:
        """Where the finished clip is served."""
        return f"{self.base_url}/r2/v1/{job.id}/output.mp4"

    def status_body(self, job: FakeJob) -> dict[str, Any]:
        """The documented GET /v2/requests/status/{id} (and callback) shape."""
        now = self.clock()
        phase = job.phase(now)
        started, finished = job.started_at(now), job.finished_at(now)
        updated = finished or started or job.created_wall
        failed = phase in (Phase.FAILED, Phase.ERROR)
        return {
            "request_id": job.id,
            "status": _STATUS[phase],
            "model_id": MODEL_ID,
            "error": (job.error or "Generation failed") if failed else None,
            "output": (
                # The seed's media_type is unreliable (image/png, octet-stream); keep it that way.
                {"media_url": [self.media_url(job)], "media_type": "application/octet-stream"}
                if phase is Phase.COMPLETED
                else None
            ),
            "created_at": _iso_z(job.created_wall),
            "updated_at": _plain(updated),
            "completed_at": _plain(finished) if finished is not None else None,
        }

    async def notify(self, job: FakeJob) -> None:
        """POST the status shape, unsigned (Pixazo documents no signature)."""
        await self.deliver_webhook(job.id)

    async def deliver_webhook(self, job_id: str, *, copies: int = 1, body: dict[str, Any] | None = None) -> None:
        """Post the job's callback `copies` times (duplicates happen on network retries); `body` overrides it."""
        job = self.jobs[job_id]
        assert job.webhook_url, "the job registered no webhook"
        raw = json.dumps(body if body is not None else self.status_body(job)).encode()
        for _ in range(copies):
            await self.post_webhook(job.webhook_url, raw, {"Content-Type": "application/json"})

    # -- handlers ---------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Ocp-Apim-Subscription-Key") == self.api_key

    async def _submit(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response(APIM_401, status=401)
        if self.model_disabled:
            return web.json_response(
                {"error": "Model not found", "message": f"Model '{MODEL_ID}' not found or is disabled"}, status=400
            )
        if self.out_of_balance:
            return web.json_response(
                {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."}, status=402
            )
        if request.content_type != "application/json":
            return _bad("Content-Type must be application/json")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _bad("Request body is not valid JSON")
        problem = self._validate(body)
        hook, mode = request.headers.get("X-Webhook-URL"), request.headers.get("X-Webhook-Mode", "terminal")
        if hook is not None and not hook.startswith("https://"):
            problem = problem or "X-Webhook-URL must be an HTTPS URL"
        if mode not in ("terminal", "sync"):
            problem = problem or "X-Webhook-Mode must be terminal or sync"
        if problem:
            return _bad(problem)
        job_id = f"{MODEL_ID}_{uuid.uuid4()}"
        self.new_job(job_id, body, hook, mode)
        polling_url = f"{self.base_url}/v2/requests/status/{job_id}"
        return web.json_response({"request_id": job_id, "status": "QUEUED", "polling_url": polling_url}, status=202)

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return f"Unknown parameter(s): {', '.join(unknown)}"
        prompt, image_url = body.get("prompt"), body.get("image_url")
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required"
        if not isinstance(image_url, str) or not image_url.startswith(("http://", "https://")):
            return "image_url is required and must be a publicly accessible URL"
        if "resolution" in body and body["resolution"] not in RESOLUTIONS:
            return 'resolution must be one of "256P", "512P", "1024P"'
        duration = body.get("duration", "5s")
        if not isinstance(duration, str) or not DURATION.fullmatch(duration):
            return 'duration must be a string like "5s"'
        steps = body.get("num_inference_steps", 28)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 20 <= steps <= 50:
            return "num_inference_steps must be an integer from 20 to 50"
        if "acceleration" in body and body["acceleration"] not in ACCELERATIONS:
            return 'acceleration must be one of "regular", "fast", "ultra_fast"'
        return None

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response(APIM_401, status=401)
        job = self.jobs.get(request.match_info["request_id"])
        if job is None:
            return web.json_response({"error": "Not Found", "message": "Request not found"}, status=404)
        return web.json_response(self.status_body(job))

    async def _file(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["request_id"])
        if job is None or job.phase(self.clock()) is not Phase.COMPLETED:
            return web.Response(status=404, text="Not Found")
        # R2 serves the object with a generic type, like the status reply's media_type.
        return web.Response(body=tiny_mp4(), content_type="application/octet-stream")
