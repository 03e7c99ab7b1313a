"""Shared HTTP for every provider: one place that retries and one that translates outcomes into errors."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from providers.errors import (
    InsufficientBalance,
    JobRejected,
    OperatorError,
    ProviderError,
    SubmitOutcomeUnknown,
    TransientError,
)

log = logging.getLogger(__name__)

Describe = Callable[[Any, str], str]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    timeout: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """Full jitter (AWS style), but a server's Retry-After wins when it gives one."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        return float(rand() * min(self.max_delay, self.base_delay * (2**attempt)))


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]


def safe_url(url: str) -> str:
    """The URL without its query: webhook tokens and signed parameters stay out of logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def default_describe(body: Any, text: str) -> str:
    if isinstance(body, dict):
        for key in ("detail", "message", "error", "description"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:
                first = value[0]
                if isinstance(first, dict) and isinstance(first.get("msg"), str):
                    return str(first["msg"])
    return text[:200] if text else "no details"


def classify(
    provider: str, status: int, body: Any, text: str, headers: Mapping[str, str], describe: Describe
) -> ProviderError:
    """Turn a non-success HTTP reply into the error tree: the one translation point."""
    detail = describe(body, text)
    if status in (401, 403):
        return OperatorError(provider, f"the API key was refused ({status}): {detail}", status=status)
    if status == 402:
        return InsufficientBalance(provider, f"the provider account is out of balance: {detail}", status=status)
    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return TransientError(provider, f"HTTP {status}: {detail}", status=status, retry_after=retry_after)
    return JobRejected(provider, detail, status=status)


class HttpClient:
    """Sends provider requests over one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider: str,
        *,
        policy: RetryPolicy | None = None,
        describe: Describe = default_describe,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.session = session
        self.provider = provider
        self.policy = policy or RetryPolicy()
        self.describe = describe
        self._sleep = sleep
        self._rand = rand

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        ok: Collection[int] = (200, 201, 202),
        submit: bool = False,
        attempts: int | None = None,
        expect_json: bool = True,
    ) -> Response:
        """One logical call, retried while the error is transient.

        A submit is resent only when the provider certainly did not take it: it answered 429 or 503, or
        the connection was never made. A timeout or reset after sending raises SubmitOutcomeUnknown.
        `attempts=1` disables even that, for providers whose documents say never to resend a submit.
        `data` sends raw bytes instead of JSON; `expect_json=False` accepts a reply that is not JSON.
        """
        request = _Request(method, url, headers, json_body, data, params, ok, submit, expect_json)
        attempts = attempts or self.policy.attempts
        for attempt in range(attempts):
            try:
                return await self._once(request)
            except TransientError as exc:
                never_taken = exc.status in (429, 503) or isinstance(exc.__cause__, aiohttp.ClientConnectorError)
                if attempt + 1 >= attempts or (submit and not never_taken):
                    raise
                delay = self.policy.backoff(attempt, exc.retry_after, self._rand)
                log.info(
                    "%s %s %s: %s; retry %d in %.2fs",
                    self.provider,
                    method,
                    safe_url(url),
                    exc.detail,
                    attempt + 1,
                    delay,
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, req: _Request) -> Response:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        try:
            async with self.session.request(
                req.method,
                req.url,
                headers=dict(req.headers),
                json=req.json_body if req.data is None else None,
                data=req.data,
                params=req.params,
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, dict(resp.headers)
        except aiohttp.ClientConnectorError as exc:
            # Never connected, so nothing was sent: safe to call transient even for a submit.
            raise TransientError(self.provider, f"could not connect ({type(exc).__name__})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"connection failed ({type(exc).__name__})"
            if req.submit:
                raise SubmitOutcomeUnknown(self.provider, f"submit {what} after sending") from exc
            raise TransientError(self.provider, what) from exc
        text = raw.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = None
        if status not in req.ok:
            raise classify(self.provider, status, body, text, resp_headers, self.describe)
        if body is None and text and req.expect_json:
            if req.submit:
                raise SubmitOutcomeUnknown(self.provider, "submit answered with malformed JSON", status=status)
            raise TransientError(self.provider, "malformed JSON in reply", status=status)
        return Response(status=status, body=body, headers=resp_headers)


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: Mapping[str, str]
    json_body: Any
    data: bytes | None
    params: Mapping[str, str] | None
    ok: Collection[int]
    submit: bool
    expect_json: bool
