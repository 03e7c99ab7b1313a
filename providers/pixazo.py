"""Pixazo's hosted Kandinsky 5 Pro image-to-video (seed 003; PROTOCOLS §1e, §7).

Pixazo sits behind Azure API Management: the key travels in `Ocp-Apim-Subscription-Key`, a submit answers
202 with a request id, and one universal status endpoint reports QUEUED/PROCESSING/COMPLETED/FAILED/ERROR.
Webhooks are unsigned, so a callback is only a hint that the tracker confirms with one status call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from providers.base import (
    Capabilities,
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
from providers.errors import JobRejected, OperatorError, TransientError
from providers.http import HttpClient, RetryPolicy, Sleep, default_describe

log = logging.getLogger(__name__)

SUBMIT_PATH = "/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request"
STATUS_PATH = "/v2/requests/status/{request_id}"

CAPABILITIES = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO}),
    resolutions=("512P", "1024P"),
    durations=(5,),
    # $0.04/s at 512P and $0.12/s at 1024P (seed 003), for the only clip length we ask for.
    prices_usd_micros={
        (JobKind.IMAGE_TO_VIDEO, "512P", 5): usd("0.20"),
        (JobKind.IMAGE_TO_VIDEO, "1024P", 5): usd("0.60"),
    },
    accelerations=("regular", "fast", "ultra_fast"),
    steps_range=(20, 50),
    push=True,
)

_STATES = {
    "QUEUED": JobState.QUEUED,
    "PROCESSING": JobState.PROCESSING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "ERROR": JobState.FAILED,
}


def describe(body: Any, text: str) -> str:
    """Pixazo's queue errors are `{"error": title, "message": text}`; keep both halves."""
    if isinstance(body, dict):
        title, message = body.get("error"), body.get("message")
        if isinstance(title, str) and title and isinstance(message, str) and message:
            return f"{title}: {message}"
    return default_describe(body, text)


def parse_time(value: object) -> float | None:
    """Epoch seconds from either stamp style Pixazo mixes (`…T13:17:32.110Z`, `… 13:19:23`), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        # The space-separated stamps carry no zone; they sit next to UTC `Z` stamps in the same reply.
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_status(body: Any) -> tuple[str, JobStatus]:
    """The request id and normalised status from a status reply or callback; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError("status reply is not an object")
    request_id, raw_state = body.get("request_id"), body.get("status")
    if not isinstance(request_id, str) or not request_id or not isinstance(raw_state, str):
        raise ValueError("status reply lacks request_id or status")
    raw_state = raw_state.upper()
    state = _STATES.get(raw_state)
    if state is None:
        # Undocumented values are treated as still running; the deadline bounds how long we wait.
        log.warning("pixazo: unknown status %r for %.80s, treating it as processing", raw_state[:40], request_id)
        state = JobState.PROCESSING
    error = body.get("error")
    error_text = error if isinstance(error, str) and error else None
    if state is JobState.COMPLETED:
        finished = parse_time(body.get("completed_at"))
        return request_id, JobStatus(state=state, video=_video(body.get("output")), finished_at=finished)
    if state is JobState.FAILED:
        # Seed 003: ERROR is "System error — not charged"; FAILED says nothing, so assume it was billed.
        charged = raw_state != "ERROR"
        detail = error_text or ("Pixazo system error (not charged)" if not charged else "Pixazo reported FAILED")
        return request_id, JobStatus(state=state, error=detail, charged=charged)
    started = parse_time(body.get("updated_at")) if state is JobState.PROCESSING else None
    return request_id, JobStatus(state=state, started_at=started)


def _video(output: Any) -> VideoResult | None:
    if not isinstance(output, dict):
        return None
    urls = output.get("media_url")
    if not isinstance(urls, list) or not urls or not isinstance(urls[0], str) or not urls[0]:
        return None
    media_type = output.get("media_type")
    # media_type is unreliable (image/png for videos in the seed): kept as a hint, the file is sniffed later.
    return VideoResult(url=urls[0], content_type=media_type if isinstance(media_type, str) else None)


class PixazoProvider:
    """Kandinsky 5 Pro image-to-video on Pixazo's gateway."""

    name = "pixazo"
    capabilities = CAPABILITIES

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str = "https://gateway.pixazo.ai",
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = HttpClient(session, self.name, policy=policy, describe=describe, sleep=sleep)
        self._base = base_url.rstrip("/")
        self._key = api_key

    def _headers(self) -> dict[str, str]:
        return {"Ocp-Apim-Subscription-Key": self._key, "Cache-Control": "no-cache"}

    async def submit(self, spec: JobSpec) -> JobHandle:
        """Queue one generation; resent only when Pixazo certainly did not take it (429/503/no connection)."""
        if spec.kind is not JobKind.IMAGE_TO_VIDEO or spec.image is None:
            raise JobRejected(self.name, "Pixazo only animates an image")
        refusal = self.capabilities.refusal(spec)
        if refusal:
            raise JobRejected(self.name, f"Pixazo: {refusal}")
        if not spec.image.public_url:
            # Raised before any HTTP so the router can fail over to a provider that accepts bytes.
            raise OperatorError(
                self.name, "Pixazo needs a public image URL: set PUBLIC_BASE_URL so the bot can host input images"
            )
        body: dict[str, Any] = {
            "prompt": spec.prompt,
            "image_url": spec.image.public_url,
            "resolution": spec.resolution,
            "duration": f"{spec.duration_s}s",
        }
        if spec.steps is not None:
            body["num_inference_steps"] = spec.steps
        if spec.acceleration is not None:
            body["acceleration"] = spec.acceleration
        headers = {**self._headers(), "Content-Type": "application/json"}
        if spec.webhook_url and spec.webhook_url.startswith("https://"):
            # Pixazo rejects plain http:// callbacks, which would fail the whole submit: poll instead.
            headers["X-Webhook-URL"] = spec.webhook_url
            headers["X-Webhook-Mode"] = "terminal"
        try:
            resp = await self._http.call(
                "POST", self._base + SUBMIT_PATH, headers=headers, json_body=body, ok=(200, 201, 202), submit=True
            )
        except JobRejected as exc:
            if "not found or is disabled" in exc.detail or exc.detail.startswith("Model not found"):
                # The model slug is ours, not the member's: this is for the operator to fix.
                raise OperatorError(self.name, exc.detail, status=exc.status) from exc
            raise
        request_id = resp.body.get("request_id") if isinstance(resp.body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise JobRejected(self.name, "Pixazo accepted the submit but returned no request_id", status=resp.status)
        return JobHandle(provider=self.name, request_id=request_id)

    async def status(self, handle: JobHandle) -> JobStatus:
        """One status observation, retried while the error is transient."""
        # Built from our base URL, never from the reply's polling_url: the key must not follow foreign hosts.
        url = self._base + STATUS_PATH.format(request_id=quote(handle.request_id, safe=""))
        resp = await self._http.call("GET", url, headers=self._headers(), ok=(200,))
        try:
            _, status = parse_status(resp.body)
        except ValueError as exc:
            raise TransientError(self.name, f"unexpected status reply: {exc}", status=resp.status) from exc
        return status

    async def result(self, handle: JobHandle) -> VideoResult:
        """The finished clip's URL; Pixazo returns it with the status, so this is one status call."""
        return video_of(self.name, await self.status(handle))

    async def cancel(self, handle: JobHandle) -> bool:
        """Pixazo documents no cancel endpoint, so nothing is sent."""
        return False

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """Pixazo signs nothing: parse the callback as an unsigned hint, None if it is malformed."""
        try:
            request_id, status = parse_status(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return WebhookEvent(request_id=request_id, status=status, signed=False)
