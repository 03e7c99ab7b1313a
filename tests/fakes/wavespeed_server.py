"""A loopback WaveSpeed v3 API for Kandinsky 5 Pro, written from seed 002, PROTOCOLS §1d/§6 and the
wavespeed SDK's upload calls.

Routes (fault names in brackets):
  POST /api/v3/wavespeed-ai/kandinsky5-pro/image-to-video[?webhook=url]  [submit]   {code, message, data}
  GET  /api/v3/predictions/{id}/result                                  [result]   same envelope
  GET  /api/v3/predictions/{id}                                         [prediction]
  GET  /api/v3/webhook/secret                                           [secret]   data.secret = "whsec_…"
  POST /api/v3/media/uploads {filename, size, content_type}             [upload_ticket]
  PUT  /upload/{token}                                                  [upload_put] (presigned: no key)
  POST /api/v3/media/upload/binary (multipart `file`, older SDKs)       [upload_binary]
  GET  /media/{token}/{filename}                                        [media]
  GET  /cdn/predictions/{id}/output.mp4                                 [files]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.clips import tiny_mp4
from tests.fakes.loopback import FakeJob, LoopbackFake, Phase

MODEL = "wavespeed-ai/kandinsky5-pro/image-to-video"
FIELDS = {"image", "prompt", "resolution", "duration"}
MAX_UPLOAD = 200 * 1024 * 1024

_STATUS = {Phase.QUEUED: "created", Phase.PROCESSING: "processing", Phase.COMPLETED: "completed"}


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    """WaveSpeed's `{code, message, data}` wrapper."""
    return {"code": code, "message": message, "data": data}


def _error(code: int, message: str) -> web.Response:
    return web.json_response(envelope(None, code, message), status=code)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Upload:
    filename: str
    size: int
    content_type: str
    data: bytes | None = None


class FakeWaveSpeed(LoopbackFake):
    """WaveSpeed's API, media storage, CDN and signed webhooks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook_secret = "whsec_" + secrets.token_urlsafe(24)
        self.uploads: dict[str, Upload] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register the API's routes."""
        app.router.add_post(f"/api/v3/{MODEL}", self._submit, name="submit")
        app.router.add_get("/api/v3/predictions/{id}/result", self._result, name="result")
        app.router.add_get("/api/v3/predictions/{id}", self._result, name="prediction")
        app.router.add_get("/api/v3/webhook/secret", self._secret, name="secret")
        app.router.add_post("/api/v3/media/uploads", self._ticket, name="upload_ticket")
        app.router.add_put("/upload/{token}", self._put, name="upload_put")
        app.router.add_post("/api/v3/media/upload/binary", self._binary, name="upload_binary")
        app.router.add_get("/media/{token}/{filename}", self._media, name="media")
        app.router.add_get("/cdn/predictions/{id}/output.mp4", self._file, name="files")

    # -- manual progression -----------------------------------------------------------------------

    async def start(self, job_id: str) -> None:
        """created -> processing."""
        await self.transition(job_id, Phase.PROCESSING)

    async def complete(self, job_id: str) -> None:
        """-> completed with one output, and the signed callback."""
        await self.transition(job_id, Phase.COMPLETED)

    async def fail(self, job_id: str, error: str = "Generation failed", *, status: str = "failed") -> None:
        """-> failed (or the SDK's other terminal spellings: cancelled, timeout, deleted), with the callback."""
        await self.transition(job_id, Phase.FAILED, error=error, raw=status)

    # -- shapes -----------------------------------------------------------------------------------

    def prediction(self, job: FakeJob) -> dict[str, Any]:
        """The documented `data` object of a result reply."""
        now = self.clock()
        phase = job.phase(now)
        done = phase is Phase.COMPLETED
        started, finished = job.started_at(now), job.finished_at(now)
        inference = int((finished - started) * 1000) if done and started and finished else 0
        return {
            "id": job.id,
            "model": MODEL,
            "outputs": [f"{self.base_url}/cdn/predictions/{job.id}/output.mp4"] if done else [],
            "urls": {"get": f"{self.base_url}/api/v3/predictions/{job.id}/result"},
            "has_nsfw_contents": [False] if done else [],
            "status": _STATUS.get(phase) or job.raw_status or "failed",
            "created_at": _iso(job.created_wall),
            "error": (job.error or "Generation failed") if phase is Phase.FAILED else "",
            "timings": {"inference": inference},
        }

    def webhook_body(self, job: FakeJob) -> dict[str, Any]:
        """The callback: the prediction without timings, plus the input; outputs only when completed."""
        body = {k: v for k, v in self.prediction(job).items() if k != "timings"}
        body["input"] = job.input
        if body["status"] != "completed":
            body.pop("outputs")
        return body

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """`v3,<hex HMAC-SHA256>` over `{id}.{timestamp}.{body}`, keyed by the secret after `whsec_`."""
        key = self.webhook_secret.removeprefix("whsec_").encode()
        digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return f"v3,{digest}"

    def signed_headers(self, body: bytes, *, timestamp: int | None = None, forged: bool = False) -> dict[str, str]:
        """The headers WaveSpeed sends with a callback; `forged` signs with the wrong key."""
        webhook_id = uuid.uuid4().hex[:25]
        stamp = int(self.wall()) if timestamp is None else timestamp
        signature = self.sign(webhook_id, stamp, body)
        if forged:
            signature = "v3," + hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature,
            "Content-Type": "application/json",
        }

    async def notify(self, job: FakeJob) -> None:
        """Post the signed terminal callback."""
        await self.deliver_webhook(job.id)

    async def deliver_webhook(
        self,
        job_id: str,
        *,
        copies: int = 1,
        forged: bool = False,
        stale: bool = False,
        timestamp: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Post the job's callback: `copies` identical deliveries, or a forged or stale (10 min old) one."""
        job = self.jobs[job_id]
        assert job.webhook_url, "the job registered no webhook"
        raw = json.dumps(body if body is not None else self.webhook_body(job)).encode()
        stamp = int(self.wall()) - 600 if stale else timestamp
        headers = self.signed_headers(raw, timestamp=stamp, forged=forged)
        for _ in range(copies):
            await self.post_webhook(job.webhook_url, raw, headers)

    # -- handlers ---------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _json(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            return None

    async def _submit(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Unauthorized: invalid API key")
        body = await self._json(request)
        problem = self._validate(body)
        hook = request.query.get("webhook")
        if hook is not None and not hook.startswith(("http://", "https://")):
            problem = problem or "webhook must be a URL"
        if problem:
            return _error(400, problem)
        job = self.new_job(uuid.uuid4().hex, body, hook)
        return web.json_response(envelope(self.prediction(job)))

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return f"unknown parameter(s): {', '.join(unknown)}"
        image, prompt = body.get("image"), body.get("prompt")
        if not isinstance(image, str) or not image.startswith(("http://", "https://")):
            return "image is required and must be an image URL"
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required"
        if body.get("resolution", "512p") not in ("512p", "1024p"):
            return "resolution must be one of 512p, 1024p"
        duration = body.get("duration", 5)
        if isinstance(duration, bool) or duration != 5 or not isinstance(duration, int):
            return "duration must be the integer 5"
        return None

    async def _result(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Unauthorized: invalid API key")
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _error(404, "prediction not found")
        return web.json_response(envelope(self.prediction(job)))

    async def _secret(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Unauthorized: invalid API key")
        return web.json_response(envelope({"secret": self.webhook_secret}))

    async def _ticket(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Unauthorized: invalid API key")
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("filename"), str) or not body["filename"]:
            return _error(400, "filename is required")
        size, content_type = body.get("size"), body.get("content_type", "application/octet-stream")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_UPLOAD:
            return _error(400, "size must be a positive integer no larger than 200 MB")
        token = uuid.uuid4().hex
        self.uploads[token] = Upload(body["filename"], size, str(content_type))
        return web.json_response(
            envelope(
                {
                    "filename": body["filename"],
                    "size": size,
                    "download_url": f"{self.base_url}/media/{token}/{body['filename']}",
                    "upload": {
                        "method": "PUT",
                        "url": f"{self.base_url}/upload/{token}",
                        "headers": {"Content-Type": str(content_type)},
                    },
                }
            )
        )

    async def _put(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["token"])
        if upload is None:
            return web.Response(status=404, text="NoSuchUpload")
        if "Authorization" in request.headers:
            # A presigned URL carries its own authority; storage refuses a second one (and the key must not go there).
            return web.Response(status=400, text="Only one auth mechanism allowed")
        data = await request.read()
        if len(data) != upload.size or request.headers.get("Content-Type") != upload.content_type:
            return web.Response(status=403, text="SignatureDoesNotMatch")
        upload.data = data
        return web.Response(status=200)

    async def _binary(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Unauthorized: invalid API key")
        form = await request.post()
        field = form.get("file")
        if not isinstance(field, web.FileField):
            return _error(400, "file is required")
        data = field.file.read()
        token = uuid.uuid4().hex
        self.uploads[token] = Upload(field.filename, len(data), field.content_type, data)
        return web.json_response(envelope({"download_url": f"{self.base_url}/media/{token}/{field.filename}"}))

    async def _media(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["token"])
        if upload is None or upload.data is None or upload.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=upload.data, content_type=upload.content_type)

    async def _file(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.phase(self.clock()) is not Phase.COMPLETED:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=tiny_mp4(), content_type="video/mp4")
