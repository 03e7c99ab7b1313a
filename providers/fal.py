"""fal.ai queue adapter for Kandinsky 5: image-to-video (pro) and text-to-video (distill).

Protocol: PROTOCOLS.md §1b, §1c, §2, §3. Submits are never resent (attempts=1); the status, result and
cancel URLs fal returns are stored in the handle and used as given, because fal drops the model subpath.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

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
)
from providers.errors import (
    JobRejected,
    OperatorError,
    ProviderError,
    ResultUnusable,
    SubmitOutcomeUnknown,
    TransientError,
)
from providers.fal_parse import built_urls, read_logs, same_origin, video_from_output
from providers.fal_webhook import JwksCache, SignatureVerifier
from providers.http import HttpClient, RetryPolicy, Sleep, default_describe

log = logging.getLogger(__name__)

NAME = "fal"
I2V_MODEL = "fal-ai/kandinsky5-pro/image-to-video"
T2V_MODEL = "fal-ai/kandinsky5/text-to-video/distill"
DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"

I2V_RESOLUTIONS = ("512P", "1024P")  # seed 001: upper-case P, unlike WaveSpeed
ACCELERATIONS = ("none", "regular")
STEPS_RANGE = (1, 40)  # seed 000
ASPECT_RATIOS = ("3:2", "1:1", "2:3")  # seed 004
T2V_DURATIONS = (5, 10)
URL_KEYS = ("status_url", "response_url", "cancel_url")

# Infrastructure failures that fal does not bill (PROTOCOLS §2: "5xx failures are not billed").
UNBILLED_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
    }
)

CAPABILITIES = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO, JobKind.TEXT_TO_VIDEO}),
    resolutions=I2V_RESOLUTIONS,
    durations=(5, 10),
    prices_usd_micros={
        (JobKind.IMAGE_TO_VIDEO, "512P", 5): usd("0.20"),
        (JobKind.IMAGE_TO_VIDEO, "1024P", 5): usd("0.60"),
        (JobKind.TEXT_TO_VIDEO, "any", 5): usd("0.05"),
        (JobKind.TEXT_TO_VIDEO, "any", 10): usd("0.10"),
    },
    accelerations=ACCELERATIONS,
    steps_range=STEPS_RANGE,
    push=True,
)


class FalProvider:
    """Kandinsky 5 on fal's queue API."""

    name = NAME
    capabilities = CAPABILITIES

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        jwks_url: str = DEFAULT_JWKS_URL,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        max_data_uri_bytes: int = 10 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        user_id: str | None = None,
    ) -> None:
        if not api_key:
            raise OperatorError(NAME, "FAL_KEY is empty")
        self._key = api_key
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Key {api_key}", "Accept": "application/json"}
        self._http = HttpClient(session, NAME, policy=policy, describe=self.describe, sleep=sleep)
        self._max_data_uri_bytes = max_data_uri_bytes
        self._unknown_statuses: set[str] = set()
        jwks_http = HttpClient(session, NAME, policy=RetryPolicy(attempts=2, timeout=10.0), sleep=sleep)
        jwks = JwksCache(jwks_http, jwks_url, clock=clock)
        self._verifier = SignatureVerifier(jwks, clock=clock, user_id=user_id)

    # -- submit ---------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobHandle:
        """Queue one generation; never resent, so a lost reply raises SubmitOutcomeUnknown."""
        model, body = self._input(spec)
        params = {"fal_webhook": spec.webhook_url} if spec.webhook_url else None
        resp = await self._http.call(
            "POST",
            f"{self._base}/{model}",
            headers=self._headers,
            json_body=body,
            params=params,
            submit=True,
            attempts=1,
        )
        reply = resp.body if isinstance(resp.body, dict) else {}
        request_id = reply.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            # fal answered 2xx, so the job may exist; without its id it cannot be tracked or cancelled.
            raise SubmitOutcomeUnknown(NAME, "submit reply carried no request_id", status=resp.status)
        extra = {"model": model, **self._urls(model, request_id, reply)}
        return JobHandle(provider=NAME, request_id=request_id, extra=extra)

    def _input(self, spec: JobSpec) -> tuple[str, dict[str, Any]]:
        if spec.kind is JobKind.IMAGE_TO_VIDEO:
            if spec.resolution not in I2V_RESOLUTIONS:
                raise JobRejected(NAME, f"fal renders image-to-video at 512P or 1024P, not {spec.resolution}.")
            if spec.duration_s != 5:
                raise JobRejected(NAME, "fal's Kandinsky 5 Pro makes 5-second clips only.")
            body: dict[str, Any] = {
                "prompt": spec.prompt,
                "image_url": self._image_url(spec),
                "resolution": spec.resolution,
                "duration": "5s",
            }
            if spec.steps is not None:
                low, high = STEPS_RANGE
                if not low <= spec.steps <= high:
                    raise JobRejected(NAME, f"Inference steps must be between {low} and {high}.")
                body["num_inference_steps"] = spec.steps
            if spec.acceleration is not None:
                if spec.acceleration not in ACCELERATIONS:
                    raise JobRejected(NAME, "Acceleration must be none or regular on fal.")
                body["acceleration"] = spec.acceleration
            return I2V_MODEL, body
        aspect = spec.aspect_ratio or "3:2"
        if aspect not in ASPECT_RATIOS:
            raise JobRejected(NAME, f"Aspect ratio must be one of {', '.join(ASPECT_RATIOS)}.")
        if spec.duration_s not in T2V_DURATIONS:
            raise JobRejected(NAME, "Text-to-video clips last 5 or 10 seconds.")
        # The distilled model takes no steps, acceleration or P-resolution (seed 004); its size follows the
        # aspect ratio, so those spec fields are deliberately not sent.
        return T2V_MODEL, {"prompt": spec.prompt, "aspect_ratio": aspect, "duration": f"{spec.duration_s}s"}

    def _image_url(self, spec: JobSpec) -> str:
        image = spec.image
        if image is None:
            raise JobRejected(NAME, "Image-to-video needs an image.")
        if len(image.data) <= self._max_data_uri_bytes:
            return image.data_uri()
        if image.public_url and image.public_url.startswith(("https://", "http://")):
            return image.public_url
        limit_mb = self._max_data_uri_bytes / (1024 * 1024)
        raise JobRejected(
            NAME,
            f"The image is too large to send inline ({len(image.data) / (1024 * 1024):.1f} MB, limit "
            f"{limit_mb:.1f} MB) and has no public link fal could fetch; send a smaller image.",
        )

    def _urls(self, model: str, request_id: str, reply: Mapping[str, Any]) -> dict[str, str]:
        built = built_urls(self._base, model, request_id)
        urls: dict[str, str] = {}
        for key in URL_KEYS:
            given = reply.get(key)
            if isinstance(given, str) and same_origin(given, self._base):
                urls[key] = given
            else:
                if given is not None:
                    # The key goes with every call to these URLs: never to a host other than fal's queue.
                    log.warning("fal submit returned a %s on another host; using the queue host instead", key)
                urls[key] = built[key]
        return urls

    def _url(self, handle: JobHandle, key: str) -> str:
        given = handle.extra.get(key)
        if given:
            return given
        model = handle.extra.get("model")
        if not model:
            raise OperatorError(NAME, f"job {handle.request_id} has no stored model id; it cannot be reached")
        return built_urls(self._base, model, handle.request_id)[key]

    # -- status, result, cancel -----------------------------------------------------------------

    async def status(self, handle: JobHandle) -> JobStatus:
        """One status observation; queue position while queued, runner logs once running."""
        resp = await self._http.call(
            "GET", self._url(handle, "status_url"), headers=self._headers, params={"logs": "1"}, ok=(200, 202)
        )
        return self._parse_status(resp.body)

    def _parse_status(self, body: Any) -> JobStatus:
        if not isinstance(body, dict):
            raise TransientError(NAME, "status reply was not a JSON object")
        state = body.get("status")
        logs, started_at = read_logs(body.get("logs"))
        if state == "IN_QUEUE":
            position = body.get("queue_position")
            valid = isinstance(position, int) and not isinstance(position, bool) and position >= 0
            return JobStatus(JobState.QUEUED, queue_position=position if valid else None)
        if state == "IN_PROGRESS":
            return JobStatus(JobState.PROCESSING, logs=logs, started_at=started_at)
        if state == "COMPLETED":
            error = body.get("error")
            if error:
                error_type = body.get("error_type")
                return JobStatus(
                    JobState.FAILED,
                    logs=logs,
                    started_at=started_at,
                    error=self._error_text(error, error_type),
                    charged=error_type not in UNBILLED_ERROR_TYPES,
                )
            return JobStatus(
                JobState.COMPLETED, logs=logs, started_at=started_at, finished_at=_finished(started_at, body)
            )
        label = str(state)[:40]
        if label not in self._unknown_statuses:
            self._unknown_statuses.add(label)
            log.warning("fal returned unknown status %r; treating it as processing", label)
        return JobStatus(JobState.PROCESSING, logs=logs, started_at=started_at)

    async def result(self, handle: JobHandle) -> VideoResult:
        """The finished clip's URL and size; a failed model run raises JobRejected with fal's reason."""
        try:
            resp = await self._http.call("GET", self._url(handle, "response_url"), headers=self._headers, ok=(200,))
        except JobRejected as exc:
            # fal answers 400 "Request is still in progress" before completion: not a verdict on the job.
            if exc.status == 400 and "in progress" in exc.detail.lower():
                raise TransientError(NAME, "the result is not ready yet", status=400) from exc
            raise
        video = video_from_output(resp.body)
        if video is None:
            raise ResultUnusable(NAME, "fal's result has no usable video URL", status=resp.status)
        return video

    async def cancel(self, handle: JobHandle) -> bool:
        """Ask fal to stop the job; True when it accepted. Never raises: cancelling is best effort."""
        try:
            resp = await self._http.call(
                "PUT", self._url(handle, "cancel_url"), headers=self._headers, ok=(200, 202), attempts=2
            )
        except ProviderError as exc:
            log.info("fal cancel of %s not done: %s", handle.request_id, exc.detail)
            return False
        outcome = resp.body.get("status") if isinstance(resp.body, dict) else None
        if outcome in ("OK", "CANCELLATION_REQUESTED"):
            return True
        log.info("fal cancel of %s answered %s", handle.request_id, str(outcome)[:40])
        return False

    # -- webhooks -------------------------------------------------------------------------------

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The callback's outcome if its ED25519 signature is valid and fresh, else None."""
        signed_id = await self._verifier.verify(headers, body)
        if signed_id is None:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("signed fal webhook for %s is not JSON", signed_id)
            return None
        if not isinstance(data, dict):
            return None
        request_id = data.get("request_id")
        if signed_id not in (request_id, data.get("gateway_request_id")) or not isinstance(request_id, str):
            log.warning("fal webhook body names another request than its signature")
            return None
        outcome = data.get("status")
        if outcome == "OK":
            payload = data.get("payload")
            return WebhookEvent(request_id, JobStatus(JobState.COMPLETED, video=video_from_output(payload)), True)
        if outcome == "ERROR":
            payload = data.get("payload")
            error_type = payload.get("error_type") if isinstance(payload, dict) else None
            reason = self.describe(payload, "") if isinstance(payload, dict) else ""
            if not reason or reason == "no details":
                reason = self._error_text(data.get("error") or "fal reported an error", None)
            status = JobStatus(JobState.FAILED, error=reason, charged=error_type not in UNBILLED_ERROR_TYPES)
            return WebhookEvent(request_id, status, True)
        return WebhookEvent(request_id, None, True)

    # -- errors ---------------------------------------------------------------------------------

    def describe(self, body: Any, text: str) -> str:
        """A safe one-line reason from a fal error body: validation detail, infrastructure detail or text."""
        reason = ""
        if isinstance(body, dict):
            detail = body.get("detail")
            if isinstance(detail, list) and detail and isinstance(detail[0], dict):
                first = detail[0]
                reason = str(first.get("msg") or first.get("type") or "invalid input")
                loc = first.get("loc")
                # fal's locations start with "body"; the field name after it is what a reader needs.
                where = [str(part) for part in loc if part != "body"] if isinstance(loc, list) else []
                if where:
                    reason += f" ({'.'.join(where)})"
            elif isinstance(detail, str) and detail:
                reason = detail
                if isinstance(body.get("error_type"), str):
                    reason += f" [{body['error_type']}]"
            elif isinstance(body.get("status"), str):
                reason = body["status"]  # cancel replies carry only a status word
        if not reason:
            reason = default_describe(body, text)
        return self._scrub(reason)[:300]

    def _error_text(self, error: Any, error_type: Any) -> str:
        text = error if isinstance(error, str) else json.dumps(error)[:300]
        if isinstance(error_type, str) and error_type:
            text += f" [{error_type}]"
        return self._scrub(text)[:300]

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]")


def _finished(started_at: float | None, body: Mapping[str, Any]) -> float | None:
    """When the run ended, from the runner's first log line plus `metrics.inference_time` (PROTOCOLS §2)."""
    metrics = body.get("metrics")
    took = metrics.get("inference_time") if isinstance(metrics, dict) else None
    if started_at is None or isinstance(took, bool) or not isinstance(took, int | float) or not 0 <= took < 86400:
        return None
    return started_at + float(took)
