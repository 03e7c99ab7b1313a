"""PixazoProvider against the loopback Pixazo fake: real aiohttp, no mocks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from providers.base import ImageInput, JobHandle, JobKind, JobSpec, JobState, Provider, VideoResult, usd
from providers.errors import (
    InsufficientBalance,
    JobRejected,
    OperatorError,
    ProviderError,
    SubmitOutcomeUnknown,
    TransientError,
)
from providers.http import RetryPolicy
from providers.pixazo import PixazoProvider, parse_time
from tests.fakes.clips import png_bytes, tiny_mp4
from tests.fakes.faults import Fault, malformed, not_mp4, reply, reset, slow
from tests.fakes.loopback import WebhookReceiver
from tests.fakes.pixazo_server import FakePixazo

KEY = "pz-SECRET-key-4f1c9a"
IMAGE_URL = "https://cdn.example/inputs/cat.png"
POLICY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=60.0, timeout=0.5)


class RecordingSleep:
    """Stands in for asyncio.sleep so backoff is observed, not waited for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakePixazo]:
    async with FakePixazo.running(api_key=KEY) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def provider(session: aiohttp.ClientSession, fake: FakePixazo, sleeps: RecordingSleep) -> PixazoProvider:
    return PixazoProvider(session, api_key=KEY, base_url=fake.base_url, policy=POLICY, sleep=sleeps)


def spec(
    public_url: str | None = IMAGE_URL,
    *,
    resolution: str = "512P",
    steps: int | None = None,
    acceleration: str | None = None,
    webhook_url: str | None = None,
) -> JobSpec:
    image = ImageInput(data=png_bytes(), mime="image/png", public_url=public_url)
    return JobSpec(
        kind=JobKind.IMAGE_TO_VIDEO,
        prompt="the cat waves slowly",
        image=image,
        resolution=resolution,
        steps=steps,
        acceleration=acceleration,
        webhook_url=webhook_url,
    )


def test_capabilities_and_protocol(provider: PixazoProvider) -> None:
    caps = provider.capabilities
    assert isinstance(provider, Provider)
    assert provider.name == "pixazo"
    assert caps.price_usd_micros(spec(resolution="512P")) == usd("0.20")
    assert caps.price_usd_micros(spec(resolution="1024P")) == usd("0.60")
    assert caps.push and caps.steps_range == (20, 50)
    assert caps.accelerations == ("regular", "fast", "ultra_fast")
    assert not caps.supports(spec(resolution="256P"))


async def test_submit_sends_the_documented_request(provider: PixazoProvider, fake: FakePixazo) -> None:
    handle = await provider.submit(spec(resolution="1024P", steps=30, acceleration="fast"))

    [seen] = fake.seen("submit")
    assert seen.method == "POST" and seen.path == "/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request"
    assert seen.headers["Ocp-Apim-Subscription-Key"] == KEY
    assert seen.headers["Cache-Control"] == "no-cache"
    assert seen.headers["Content-Type"] == "application/json"
    assert "X-Webhook-URL" not in seen.headers
    assert seen.json == {
        "prompt": "the cat waves slowly",
        "image_url": IMAGE_URL,
        "resolution": "1024P",
        "duration": "5s",
        "num_inference_steps": 30,
        "acceleration": "fast",
    }
    assert handle == JobHandle(provider="pixazo", request_id=handle.request_id)
    assert handle.request_id in fake.jobs and handle.request_id.startswith("kandinsky-5-0-pro-953_")


async def test_optional_fields_are_left_out(provider: PixazoProvider, fake: FakePixazo) -> None:
    await provider.submit(spec())
    assert fake.seen("submit")[0].json == {
        "prompt": "the cat waves slowly",
        "image_url": IMAGE_URL,
        "resolution": "512P",
        "duration": "5s",
    }


async def test_no_public_url_is_an_operator_error_before_any_request(
    provider: PixazoProvider, fake: FakePixazo
) -> None:
    with pytest.raises(OperatorError, match="PUBLIC_BASE_URL"):
        await provider.submit(spec(public_url=None))
    assert fake.requests == []


async def test_happy_path_queued_processing_completed(
    provider: PixazoProvider, fake: FakePixazo, session: aiohttp.ClientSession
) -> None:
    handle = await provider.submit(spec())
    assert (await provider.status(handle)).state is JobState.QUEUED

    await fake.start(handle.request_id)
    running = await provider.status(handle)
    assert running.state is JobState.PROCESSING
    assert running.started_at is not None and abs(running.started_at - fake.wall()) < 5

    await fake.complete(handle.request_id)
    done = await provider.status(handle)
    media_url = f"{fake.base_url}/r2/v1/{handle.request_id}/output.mp4"
    assert done.state is JobState.COMPLETED
    assert done.video == VideoResult(url=media_url, content_type="application/octet-stream")
    assert await provider.result(handle) == done.video
    [seen] = fake.seen("status")[:1]
    assert seen.path == f"/v2/requests/status/{handle.request_id}"
    assert seen.headers["Ocp-Apim-Subscription-Key"] == KEY
    async with session.get(media_url) as resp:
        assert await resp.read() == tiny_mp4()


async def test_failed_is_charged_and_error_is_not(provider: PixazoProvider, fake: FakePixazo) -> None:
    failed, errored = await provider.submit(spec()), await provider.submit(spec())
    await fake.fail(failed.request_id, "NSFW content detected")
    await fake.error(errored.request_id, "GPU worker crashed")

    f, e = await provider.status(failed), await provider.status(errored)
    assert (f.state, f.charged, f.error) == (JobState.FAILED, True, "NSFW content detected")
    assert (e.state, e.charged, e.error) == (JobState.FAILED, False, "GPU worker crashed")
    with pytest.raises(JobRejected) as rejected:
        await provider.result(errored)
    assert rejected.value.charged is False


async def test_out_of_balance_is_insufficient_balance(provider: PixazoProvider, fake: FakePixazo) -> None:
    fake.out_of_balance = True
    with pytest.raises(InsufficientBalance) as raised:
        await provider.submit(spec())
    assert "Insufficient Balance: Your wallet does not have enough balance." in str(raised.value)
    assert raised.value.status == 402
    assert len(fake.seen("submit")) == 1


async def test_disabled_model_is_for_the_operator(provider: PixazoProvider, fake: FakePixazo) -> None:
    fake.model_disabled = True
    with pytest.raises(OperatorError, match="not found or is disabled") as raised:
        await provider.submit(spec())
    assert not isinstance(raised.value, InsufficientBalance)


async def test_wrong_key_is_an_operator_error(session: aiohttp.ClientSession, fake: FakePixazo) -> None:
    wrong = PixazoProvider(session, api_key="not-the-key", base_url=fake.base_url, policy=POLICY)
    with pytest.raises(OperatorError) as raised:
        await wrong.submit(spec())
    assert raised.value.status == 401 and "invalid subscription key" in raised.value.detail


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [(spec(steps=10), "steps must be from 20 to 50"), (spec(acceleration="turbo"), "acceleration")],
)
async def test_invalid_parameters_are_rejected(
    provider: PixazoProvider, fake: FakePixazo, bad: JobSpec, complaint: str
) -> None:
    # Refused before a request is spent: Pixazo's document gives the ranges.
    with pytest.raises(JobRejected, match=complaint) as raised:
        await provider.submit(bad)
    assert raised.value.charged is False
    assert fake.jobs == {} and fake.seen("submit") == []


async def test_status_429_honours_retry_after(
    provider: PixazoProvider, fake: FakePixazo, sleeps: RecordingSleep
) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("status", reply(429, {"statusCode": 429, "message": "Rate limit is exceeded."}, retry_after=7))
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert sleeps.delays == [7.0]
    assert len(fake.seen("status")) == 2


async def test_status_5xx_burst_is_retried(provider: PixazoProvider, fake: FakePixazo, sleeps: RecordingSleep) -> None:
    handle = await provider.submit(spec())
    for code in (500, 502, 503):
        fake.faults.add("status", reply(code))
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert len(fake.seen("status")) == 4 and len(sleeps.delays) == 3


async def test_status_gives_up_after_the_policy(provider: PixazoProvider, fake: FakePixazo) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("status", reply(503), times=POLICY.attempts)
    with pytest.raises(TransientError) as raised:
        await provider.status(handle)
    assert raised.value.status == 503 and len(fake.seen("status")) == POLICY.attempts


async def test_status_reset_and_timeout_are_retried(
    provider: PixazoProvider, fake: FakePixazo, sleeps: RecordingSleep
) -> None:
    handle = await provider.submit(spec())
    # aiohttp silently repeats an idempotent GET once after a reset, so two resets reach our retry loop.
    fake.faults.add("status", reset(), times=2)
    assert (await provider.status(handle)).state is JobState.QUEUED
    fake.faults.add("status", slow(30))
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert len(sleeps.delays) == 2


async def test_malformed_status_is_retried(provider: PixazoProvider, fake: FakePixazo, sleeps: RecordingSleep) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("status", malformed())
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert len(sleeps.delays) == 1


@pytest.mark.parametrize("fault", [reset(after_handler=True), slow(30), malformed(202, after_handler=True)])
async def test_lost_submit_reply_is_never_resent(provider: PixazoProvider, fake: FakePixazo, fault: Fault) -> None:
    fake.faults.add("submit", fault)
    with pytest.raises(SubmitOutcomeUnknown):
        await provider.submit(spec())
    assert len(fake.seen("submit")) == 1


async def test_submit_refused_with_503_is_resent(provider: PixazoProvider, fake: FakePixazo) -> None:
    fake.faults.add("submit", reply(503))
    handle = await provider.submit(spec())
    assert len(fake.seen("submit")) == 2 and list(fake.jobs) == [handle.request_id]


async def test_unknown_status_is_tolerated(provider: PixazoProvider, fake: FakePixazo) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("status", reply(200, {"request_id": handle.request_id, "status": "WARMING_UP"}))
    assert (await provider.status(handle)).state is JobState.PROCESSING


async def test_only_https_webhooks_are_registered(provider: PixazoProvider, fake: FakePixazo) -> None:
    await provider.submit(spec(webhook_url="http://bot.example/hooks/pixazo"))
    await provider.submit(spec(webhook_url="https://bot.example/hooks/pixazo"))
    plain, secure = fake.seen("submit")
    assert "X-Webhook-URL" not in plain.headers and "X-Webhook-Mode" not in plain.headers
    assert secure.headers["X-Webhook-URL"] == "https://bot.example/hooks/pixazo"
    assert secure.headers["X-Webhook-Mode"] == "terminal"


async def test_unsigned_webhook_is_a_hint(provider: PixazoProvider, fake: FakePixazo) -> None:
    async with WebhookReceiver.running() as receiver:
        fake.webhook_redirects["https://bot.example"] = receiver.base_url
        handle = await provider.submit(spec(webhook_url="https://bot.example/hooks/pixazo"))
        await fake.start(handle.request_id)  # terminal mode: no callback yet
        await fake.error(handle.request_id, "GPU worker crashed")
        await fake.deliver_webhook(handle.request_id)  # a network retry: the same callback again
        await receiver.wait_for(2)

    assert len(receiver.received) == 2
    events = [await provider.verify_webhook(headers, body) for headers, body in receiver.received]
    assert events[0] == events[1]
    event = events[0]
    assert event is not None and event.signed is False and event.request_id == handle.request_id
    assert event.status is not None
    assert (event.status.state, event.status.charged) == (JobState.FAILED, False)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"status": "COMPLETED"}', b"\xff\xfe"])
async def test_malformed_webhook_is_dropped(provider: PixazoProvider, body: bytes) -> None:
    assert await provider.verify_webhook({"Content-Type": "application/json"}, body) is None


async def test_cancel_is_not_offered(provider: PixazoProvider, fake: FakePixazo) -> None:
    assert await provider.cancel(JobHandle("pixazo", "kandinsky-5-0-pro-953_x")) is False
    assert fake.requests == []


def test_timestamps_are_parsed_leniently() -> None:
    assert parse_time("2026-05-22T13:17:32.110Z") == pytest.approx(1779455852.11)
    assert parse_time("2026-05-22 13:19:23") == 1779455963.0
    assert parse_time("yesterday") is None and parse_time(None) is None


async def test_fake_progresses_on_its_schedule(session: aiohttp.ClientSession) -> None:
    clock = Clock()
    async with FakePixazo.running(api_key=KEY, schedule=lambda i: (10.0, 20.0 + i), clock=clock) as fake:
        provider = PixazoProvider(session, api_key=KEY, base_url=fake.base_url, policy=POLICY)
        handle = await provider.submit(spec())
        assert (await provider.status(handle)).state is JobState.QUEUED
        clock.now += 15
        assert (await provider.status(handle)).state is JobState.PROCESSING
        clock.now += 16
        assert (await provider.status(handle)).state is JobState.COMPLETED


async def test_fake_rejects_what_the_document_forbids(session: aiohttp.ClientSession, fake: FakePixazo) -> None:
    url = fake.base_url + "/kandinsky-5-0-pro-953/v1/kandinsky-5-0-pro-request"
    good = {"prompt": "p", "image_url": IMAGE_URL}
    cases = [
        ({"X-Webhook-URL": "http://bot.example/hook"}, good),
        ({}, {"prompt": "p"}),
        ({}, {**good, "resolution": "720P"}),
        ({}, {**good, "num_inference_steps": 51}),
        ({}, {**good, "acceleration": "none"}),
    ]
    for extra, body in cases:
        headers = {"Ocp-Apim-Subscription-Key": KEY, **extra}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 400, body
    assert fake.jobs == {}
    fake.faults.add("files", not_mp4())
    async with session.get(fake.base_url + "/r2/v1/none/output.mp4") as resp:
        assert resp.status == 200 and (await resp.read()).startswith(b"<html>")


async def test_the_key_never_reaches_errors_or_logs(
    provider: PixazoProvider, fake: FakePixazo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[ProviderError] = []
    handle = await provider.submit(spec())
    fake.faults.add("status", reply(429, retry_after=1))
    await provider.status(handle)  # retried past the 429, logged
    fake.faults.add("status", reply(500), times=POLICY.attempts)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: provider.status(handle),
        lambda: provider.submit(spec(steps=99)),
    ]
    for attempt in attempts:
        with pytest.raises(ProviderError) as raised:
            await attempt()
        errors.append(raised.value)
    fake.out_of_balance = True
    with pytest.raises(ProviderError) as raised:
        await provider.submit(spec())
    errors.append(raised.value)

    assert "retry" in caplog.text
    assert KEY not in caplog.text
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error) and KEY not in error.detail
