"""WaveSpeed's hosted Kandinsky 5 Pro image-to-video (seed 002; PROTOCOLS §1d, §6).

WaveSpeed wraps every reply in `{code, message, data}`, takes the image as `image` with lower-case
resolutions and an integer duration, accepts raw bytes through its media-upload API, and signs webhooks
with HMAC-SHA256 (`webhook-signature: v3,<hex>`) keyed by the account's webhook secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from providers.base import (
    Capabilities,
    ImageInput,
    JobHandle,
    JobKind,
    JobSpec,
    JobState,
    JobStatus,
    VideoResult,
    WebhookEvent,
    usd,
    video_of,
)
from providers.errors import JobRejected, SubmitOutcomeUnknown, TransientError
from providers.http import HttpClient, RetryPolicy, Sleep, classify, default_describe

log = logging.getLogger(__name__)

MODEL = "wavespeed-ai/kandinsky5-pro/image-to-video"
SUBMIT_PATH = f"/api/v3/{MODEL}"
RESULT_PATH = "/api/v3/predictions/{id}/result"
UPLOAD_PATH = "/api/v3/media/uploads"
WEBHOOK_KEY_PATH = "/api/v3/webhook/secret"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # the SDK's stated upload limit
WEBHOOK_MAX_AGE = 300  # seconds, WaveSpeed's WebhookMaxAgeSeconds
SECRET_REFRESH_AFTER = 300  # a mismatch with an older cached secret refetches it once (rotation)
_SIGNATURE = re.compile(r"v3,[0-9a-fA-F]{64}")  # hex only, so compare_digest never meets non-ASCII

CAPABILITIES = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO}),
    resolutions=("512P", "1024P"),
    durations=(5,),
    # $0.04/s at 512p, 3x at 1024p; duration is fixed at 5 s (seed 002).
    prices_usd_micros={
        (JobKind.IMAGE_TO_VIDEO, "512P", 5): usd("0.20"),
        (JobKind.IMAGE_TO_VIDEO, "1024P", 5): usd("0.60"),
    },
    push=True,
)

_STATES = {
    "created": JobState.QUEUED,
    "processing": JobState.PROCESSING,
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    # Not in the model page, but the SDK treats these as terminal too.
    "cancelled": JobState.FAILED,
    "timeout": JobState.FAILED,
    "deleted": JobState.FAILED,
}


def parse_prediction(data: Any) -> tuple[str, JobStatus]:
    """The task id and normalised status of one prediction object; ValueError if malformed."""
    if not isinstance(data, dict):
        raise ValueError("prediction is not an object")
    task_id, raw_state = data.get("id"), data.get("status")
    if not isinstance(task_id, str) or not task_id or not isinstance(raw_state, str):
        raise ValueError("prediction lacks id or status")
    state = _STATES.get(raw_state.lower())
    if state is None:
        log.warning("wavespeed: unknown status %r for %.80s, treating it as processing", raw_state[:40], task_id)
        state = JobState.PROCESSING
    if state is JobState.COMPLETED:
        outputs = data.get("outputs")
        first = outputs[0] if isinstance(outputs, list) and outputs else None
        video = VideoResult(url=first) if isinstance(first, str) and first else None
        return task_id, JobStatus(state=state, video=video)
    if state is JobState.FAILED:
        error = data.get("error")
        detail = error if isinstance(error, str) and error else f"WaveSpeed reported {raw_state}"
        # WaveSpeed documents no refund rule for failures, so count them as billed.
        return task_id, JobStatus(state=state, error=detail, charged=True)
    return task_id, JobStatus(state=state)


def _strip_secret(secret: str) -> str:
    # The HMAC key is the text after `whsec_`, used as-is (not base64-decoded), per WaveSpeed's docs.
    return secret.removeprefix("whsec_")


class WaveSpeedProvider:
    """Kandinsky 5 Pro image-to-video on WaveSpeed's v3 API."""

    name = "wavespeed"
    capabilities = CAPABILITIES

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str = "https://api.wavespeed.ai",
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._policy = policy or RetryPolicy()
        self._http = HttpClient(session, self.name, policy=self._policy, sleep=sleep)
        self._sleep = sleep
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._clock = clock
        self._secret: tuple[bytes, float] | None = None  # (HMAC key, when fetched)
        self._secret_lock = asyncio.Lock()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"}

    def _data(self, body: Any, status: int, *, submit: bool = False) -> dict[str, Any]:
        """The `data` of a `{code, message, data}` envelope; a non-200 `code` is an error even under HTTP 200."""
        if not isinstance(body, dict):
            what = "reply is not a JSON object"
            if submit:
                raise SubmitOutcomeUnknown(self.name, f"submit {what}", status=status)
            raise TransientError(self.name, what, status=status)
        code = body.get("code", 200)
        if isinstance(code, int) and not 200 <= code < 300:
            raise classify(self.name, code, body, "", {}, default_describe)
        data = body.get("data")
        if not isinstance(data, dict):
            what = "reply has no data object"
            if submit:
                raise SubmitOutcomeUnknown(self.name, f"submit {what}", status=status)
            raise TransientError(self.name, what, status=status)
        return data

    async def submit(self, spec: JobSpec) -> JobHandle:
        """Create one prediction. Never resent: WaveSpeed may have created it even when the reply is lost."""
        if spec.kind is not JobKind.IMAGE_TO_VIDEO or spec.image is None:
            raise JobRejected(self.name, "WaveSpeed only animates an image")
        refusal = self.capabilities.refusal(spec)
        if refusal:
            raise JobRejected(self.name, f"WaveSpeed: {refusal}")
        image = spec.image.public_url or await self._upload(spec.image)
        body = {
            "image": image,
            "prompt": spec.prompt,
            "resolution": spec.resolution.lower(),
            "duration": spec.duration_s,
        }
        params = {"webhook": spec.webhook_url} if spec.webhook_url else None
        resp = await self._http.call(
            "POST",
            self._base + SUBMIT_PATH,
            headers={**self._headers(), "Content-Type": "application/json"},
            json_body=body,
            params=params,
            ok=(200,),
            submit=True,
            attempts=1,
        )
        task_id = self._data(resp.body, resp.status, submit=True).get("id")
        if not isinstance(task_id, str) or not task_id:
            raise SubmitOutcomeUnknown(self.name, "submit answered without a task id", status=resp.status)
        return JobHandle(provider=self.name, request_id=task_id)

    async def status(self, handle: JobHandle) -> JobStatus:
        """One observation from the result endpoint (outputs come with it once completed)."""
        url = self._base + RESULT_PATH.format(id=quote(handle.request_id, safe=""))
        resp = await self._http.call("GET", url, headers=self._headers(), ok=(200,))
        try:
            _, status = parse_prediction(self._data(resp.body, resp.status))
        except ValueError as exc:
            raise TransientError(self.name, f"unexpected result reply: {exc}", status=resp.status) from exc
        return status

    async def result(self, handle: JobHandle) -> VideoResult:
        """The finished clip's URL (outputs[0]) from one result call."""
        return video_of(self.name, await self.status(handle))

    async def cancel(self, handle: JobHandle) -> bool:
        """WaveSpeed documents no cancel for predictions, so nothing is sent."""
        return False

    async def _upload(self, image: ImageInput) -> str:
        """Hand the bytes to WaveSpeed's media storage (ticket, then PUT) and return the download URL."""
        if len(image.data) > MAX_UPLOAD_BYTES:
            raise JobRejected(self.name, "the image is larger than WaveSpeed's 200 MB upload limit")
        filename = "input" + (mimetypes.guess_extension(image.mime) or ".bin")
        ticket = {"filename": filename, "size": len(image.data), "content_type": image.mime}
        # A ticket that is never used costs nothing, so this POST may be retried like a GET.
        resp = await self._http.call(
            "POST",
            self._base + UPLOAD_PATH,
            headers={**self._headers(), "Content-Type": "application/json"},
            json_body=ticket,
            ok=(200,),
        )
        data = self._data(resp.body, resp.status)
        upload, download_url = data.get("upload"), data.get("download_url")
        if (
            not isinstance(upload, dict)
            or str(upload.get("method", "")).upper() != "PUT"
            or not isinstance(upload.get("url"), str)
            or not isinstance(download_url, str)
            or not download_url
        ):
            raise TransientError(self.name, "the upload ticket lacks a PUT url or download_url")
        raw_headers = upload.get("headers")
        headers = {str(k): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
        await self._put(upload["url"], headers, image.data)
        return download_url

    async def _put(self, url: str, headers: dict[str, str], data: bytes) -> None:
        """PUT the bytes to the ticket's URL with only the ticket's headers (it may be a foreign storage host).

        Re-sending the same bytes to the same ticket is harmless, so this is retried like a status call.
        """
        await self._http.call("PUT", url, headers=headers, data=data, ok=range(200, 300), expect_json=False)

    async def _webhook_key(self, *, refresh: bool = False) -> bytes:
        """The HMAC key from GET /api/v3/webhook/secret, cached for the process."""
        async with self._secret_lock:
            if self._secret is not None and not refresh:
                return self._secret[0]
            resp = await self._http.call("GET", self._base + WEBHOOK_KEY_PATH, headers=self._headers(), ok=(200,))
            body = resp.body
            # Observed shapes differ: {"code","data":{"secret"}} or a bare {"secret"}; accept either.
            data = body.get("data") if isinstance(body, dict) else None
            if isinstance(body, dict) and isinstance(body.get("code"), int) and not 200 <= body["code"] < 300:
                raise classify(self.name, body["code"], body, "", {}, default_describe)
            secret = data.get("secret") if isinstance(data, dict) else data
            if not isinstance(secret, str) and isinstance(body, dict):
                secret = body.get("secret")
            if not isinstance(secret, str) or not secret:
                raise TransientError(self.name, "the webhook secret reply has no secret")
            self._secret = (_strip_secret(secret).encode(), self._clock())
            return self._secret[0]

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The callback if its `v3` HMAC matches and it is at most 300 s old or early; None otherwise.

        Raises ProviderError only when the secret cannot be fetched, so the receiver can answer 5xx
        and let WaveSpeed deliver again.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        webhook_id, stamp = lowered.get("webhook-id", ""), lowered.get("webhook-timestamp", "")
        signatures = [part[3:] for part in lowered.get("webhook-signature", "").split() if _SIGNATURE.fullmatch(part)]
        if not webhook_id or not (stamp.isascii() and stamp.isdigit()) or not signatures:
            return None
        if abs(self._clock() - int(stamp)) > WEBHOOK_MAX_AGE:
            return None
        message = f"{webhook_id}.{stamp}.".encode() + body
        key = await self._webhook_key()
        if not _matches(key, message, signatures):
            fetched_at = self._secret[1] if self._secret else 0.0
            if self._clock() - fetched_at < SECRET_REFRESH_AFTER:
                return None
            # The secret may have been rotated since we cached it; refetch at most once per window.
            if not _matches(await self._webhook_key(refresh=True), message, signatures):
                return None
        try:
            payload = json.loads(body)
            # Callbacks are the bare prediction object; tolerate an envelope around it as well.
            if isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "id" not in payload:
                payload = payload["data"]
            task_id, status = parse_prediction(payload)
        except ValueError:
            return None
        return WebhookEvent(request_id=task_id, status=status, signed=True)


def _matches(key: bytes, message: bytes, signatures: list[str]) -> bool:
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    # compare_digest on every candidate keeps the comparison constant-time per signature.
    return any(hmac.compare_digest(expected, candidate.lower()) for candidate in signatures)
