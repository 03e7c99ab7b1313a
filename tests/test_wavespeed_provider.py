"""WaveSpeedProvider against the loopback WaveSpeed fake: real aiohttp, no mocks."""

from __future__ import annotations

import logging
import time
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
from providers.wavespeed import WaveSpeedProvider
from tests.fakes.clips import png_bytes, tiny_mp4
from tests.fakes.faults import Fault, malformed, oversized, reply, reset, slow
from tests.fakes.loopback import WebhookReceiver
from tests.fakes.wavespeed_server import FakeWaveSpeed, envelope

KEY = "ws-SECRET-key-77d0e2"
IMAGE_URL = "https://cdn.example/inputs/cat.png"
SUBMIT_PATH = "/api/v3/wavespeed-ai/kandinsky5-pro/image-to-video"
POLICY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=60.0, timeout=0.5)


class RecordingSleep:
    """Stands in for asyncio.sleep so backoff is observed, not waited for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class OffsetClock:
    """Real wall time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def fake() -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed.running(api_key=KEY) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def provider(
    session: aiohttp.ClientSession, fake: FakeWaveSpeed, sleeps: RecordingSleep, clock: OffsetClock
) -> WaveSpeedProvider:
    return WaveSpeedProvider(session, api_key=KEY, base_url=fake.base_url, policy=POLICY, sleep=sleeps, clock=clock)


@pytest.fixture
async def receiver(fake: FakeWaveSpeed) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver.running() as server:
        fake.webhook_redirects["https://bot.example"] = server.base_url
        yield server


def spec(
    public_url: str | None = IMAGE_URL, *, resolution: str = "512P", prompt: str = "the cat waves slowly"
) -> JobSpec:
    image = ImageInput(data=png_bytes(), mime="image/png", public_url=public_url)
    return JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt=prompt, image=image, resolution=resolution)


def hooked(public_url: str | None = IMAGE_URL) -> JobSpec:
    image = ImageInput(data=png_bytes(), mime="image/png", public_url=public_url)
    return JobSpec(
        kind=JobKind.IMAGE_TO_VIDEO, prompt="p", image=image, webhook_url="https://bot.example/hooks/wavespeed?t=1"
    )


def test_capabilities_and_protocol(provider: WaveSpeedProvider) -> None:
    assert isinstance(provider, Provider) and provider.name == "wavespeed"
    assert provider.capabilities.price_usd_micros(spec(resolution="512P")) == usd("0.20")
    assert provider.capabilities.price_usd_micros(spec(resolution="1024P")) == usd("0.60")
    assert provider.capabilities.push and not provider.capabilities.supports(spec(resolution="720P"))


async def test_submit_sends_the_documented_request(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    handle = await provider.submit(spec(resolution="1024P"))

    [seen] = fake.seen("submit")
    assert (seen.method, seen.path, seen.query) == ("POST", SUBMIT_PATH, {})
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json == {"image": IMAGE_URL, "prompt": "the cat waves slowly", "resolution": "1024p", "duration": 5}
    assert handle == JobHandle(provider="wavespeed", request_id=handle.request_id)
    assert handle.request_id in fake.jobs
    assert fake.seen("upload_ticket") == []


async def test_webhook_goes_in_the_query(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    await provider.submit(hooked())
    assert fake.seen("submit")[0].query == {"webhook": "https://bot.example/hooks/wavespeed?t=1"}


async def test_image_without_public_url_is_uploaded_first(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, session: aiohttp.ClientSession, sleeps: RecordingSleep
) -> None:
    fake.faults.add("upload_ticket", reply(503))
    fake.faults.add("upload_put", reply(500))
    await provider.submit(spec(public_url=None))

    tickets = fake.seen("upload_ticket")
    assert len(tickets) == 2 and tickets[-1].headers["Authorization"] == f"Bearer {KEY}"
    assert tickets[-1].json == {"filename": "input.png", "size": len(png_bytes()), "content_type": "image/png"}
    put = fake.seen("upload_put")[-1]
    assert put.method == "PUT" and put.body == png_bytes()
    assert "Authorization" not in put.headers  # the key never goes to the storage URL
    [upload] = [u for u in fake.uploads.values() if u.data is not None]
    image = fake.seen("submit")[0].json["image"]
    assert image.startswith(fake.base_url + "/media/") and image.endswith("/input.png")
    async with session.get(image) as resp:
        assert await resp.read() == png_bytes() == upload.data
    assert len(sleeps.delays) == 2


async def test_happy_path_created_processing_completed(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, session: aiohttp.ClientSession
) -> None:
    handle = await provider.submit(spec())
    assert (await provider.status(handle)).state is JobState.QUEUED
    await fake.start(handle.request_id)
    assert (await provider.status(handle)).state is JobState.PROCESSING
    await fake.complete(handle.request_id)

    done = await provider.status(handle)
    url = f"{fake.base_url}/cdn/predictions/{handle.request_id}/output.mp4"
    assert done.state is JobState.COMPLETED and done.video == VideoResult(url=url)
    assert await provider.result(handle) == done.video
    seen = fake.seen("result")[0]
    assert seen.path == f"/api/v3/predictions/{handle.request_id}/result"
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    async with session.get(url) as resp:
        assert await resp.read() == tiny_mp4()


@pytest.mark.parametrize("raw", ["failed", "timeout", "cancelled"])
async def test_failures_are_terminal(provider: WaveSpeedProvider, fake: FakeWaveSpeed, raw: str) -> None:
    handle = await provider.submit(spec())
    await fake.fail(handle.request_id, "content policy violation", status=raw)
    status = await provider.status(handle)
    assert (status.state, status.error, status.charged) == (JobState.FAILED, "content policy violation", True)
    with pytest.raises(JobRejected, match="content policy violation"):
        await provider.result(handle)


async def test_unknown_status_is_tolerated(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    fake.faults.add("result", reply(200, envelope({"id": "abc", "status": "pending"})))
    assert (await provider.status(JobHandle("wavespeed", "abc"))).state is JobState.PROCESSING


async def test_402_is_insufficient_balance(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    fake.faults.add("submit", reply(402, envelope(None, 402, "Insufficient balance")))
    with pytest.raises(InsufficientBalance, match="Insufficient balance"):
        await provider.submit(spec())


async def test_wrong_key_is_an_operator_error(session: aiohttp.ClientSession, fake: FakeWaveSpeed) -> None:
    wrong = WaveSpeedProvider(session, api_key="nope", base_url=fake.base_url, policy=POLICY)
    with pytest.raises(OperatorError) as raised:
        await wrong.submit(spec())
    assert raised.value.status == 401


async def test_400_is_rejected(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    with pytest.raises(JobRejected, match="prompt is required") as raised:
        await provider.submit(spec(prompt=" "))
    assert raised.value.status == 400 and fake.jobs == {}


async def test_error_code_inside_http_200_is_an_error(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    fake.faults.add("submit", reply(200, envelope(None, 401, "invalid token")))
    with pytest.raises(OperatorError, match="invalid token"):
        await provider.submit(spec())
    fake.faults.add("result", reply(200, envelope(None, 500, "internal error")))
    with pytest.raises(TransientError):
        await provider.status(JobHandle("wavespeed", "abc"))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (reply(503), TransientError),
        (reply(429, retry_after=1), TransientError),
        (reset(after_handler=True), SubmitOutcomeUnknown),
        (slow(30), SubmitOutcomeUnknown),
        (malformed(after_handler=True), SubmitOutcomeUnknown),
    ],
)
async def test_submit_is_never_resent(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, fault: Fault, error: type[ProviderError]
) -> None:
    fake.faults.add("submit", fault)
    with pytest.raises(error):
        await provider.submit(spec())
    assert len(fake.seen("submit")) == 1


async def test_status_429_honours_retry_after(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, sleeps: RecordingSleep
) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("result", reply(429, envelope(None, 429, "too many requests"), retry_after=12))
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert sleeps.delays == [12.0] and len(fake.seen("result")) == 2


async def test_status_5xx_burst_then_success(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, sleeps: RecordingSleep
) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("result", reply(502), times=3)
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert len(fake.seen("result")) == 4 and len(sleeps.delays) == 3


async def test_status_reset_timeout_and_malformed_are_retried(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, sleeps: RecordingSleep
) -> None:
    handle = await provider.submit(spec())
    fake.faults.add("result", reset(), times=2)  # aiohttp absorbs one reset of a GET itself
    assert (await provider.status(handle)).state is JobState.QUEUED
    fake.faults.add("result", slow(30))
    assert (await provider.status(handle)).state is JobState.QUEUED
    fake.faults.add("result", malformed())
    assert (await provider.status(handle)).state is JobState.QUEUED
    assert len(sleeps.delays) == 3


async def test_signed_webhook_verifies(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, receiver: WebhookReceiver
) -> None:
    handle = await provider.submit(hooked())
    await fake.complete(handle.request_id)
    await fake.deliver_webhook(handle.request_id)  # a duplicate delivery
    await receiver.wait_for(2)

    events = [await provider.verify_webhook(h, b) for h, b in receiver.received]
    assert events[0] == events[1]
    event = events[0]
    assert event is not None and event.signed and event.request_id == handle.request_id
    assert event.status is not None and event.status.state is JobState.COMPLETED
    assert event.status.video == VideoResult(url=f"{fake.base_url}/cdn/predictions/{handle.request_id}/output.mp4")
    [secret] = fake.seen("secret")  # fetched once, then cached
    assert secret.headers["Authorization"] == f"Bearer {KEY}"


async def test_forged_stale_and_tampered_webhooks_are_refused(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, receiver: WebhookReceiver
) -> None:
    handle = await provider.submit(hooked())
    fake.auto_webhooks = False
    await fake.fail(handle.request_id, "boom")
    await fake.deliver_webhook(handle.request_id, forged=True)
    await fake.deliver_webhook(handle.request_id, stale=True)
    await fake.deliver_webhook(handle.request_id, timestamp=int(time.time()) + 400)
    await fake.deliver_webhook(handle.request_id)
    await receiver.wait_for(4)
    forged, stale, future, good = receiver.received

    assert await provider.verify_webhook(*forged) is None
    assert await provider.verify_webhook(*stale) is None
    assert await provider.verify_webhook(*future) is None
    assert await provider.verify_webhook(good[0], good[1].replace(b"boom", b"fine")) is None
    assert await provider.verify_webhook({}, good[1]) is None
    event = await provider.verify_webhook(*good)
    assert event is not None and event.status is not None
    assert (event.status.state, event.status.error) == (JobState.FAILED, "boom")


async def test_rotated_secret_is_refetched(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, receiver: WebhookReceiver, clock: OffsetClock
) -> None:
    handle = await provider.submit(hooked())
    await fake.complete(handle.request_id)
    await receiver.wait_for(1)
    assert await provider.verify_webhook(*receiver.received[0]) is not None
    fake.webhook_secret = "whsec_rotated-secret"
    await fake.deliver_webhook(handle.request_id)
    await receiver.wait_for(2)
    headers, body = receiver.received[1]
    assert await provider.verify_webhook(headers, body) is None  # cached secret is fresh: no refetch
    clock.offset = 301
    headers["webhook-timestamp"] = str(int(clock()))
    headers["webhook-signature"] = fake.sign(headers["webhook-id"], int(clock()), body)
    assert await provider.verify_webhook(headers, body) is not None
    assert len(fake.seen("secret")) == 2


async def test_secret_fetch_failure_is_raised(session: aiohttp.ClientSession, fake: FakeWaveSpeed) -> None:
    wrong = WaveSpeedProvider(session, api_key="nope", base_url=fake.base_url, policy=POLICY)
    stamp = int(time.time())
    headers = {"webhook-id": "x", "webhook-timestamp": str(stamp), "webhook-signature": "v3," + "0" * 64}
    with pytest.raises(OperatorError):
        await wrong.verify_webhook(headers, b"{}")


async def test_scheduled_job_completes_and_calls_back(session: aiohttp.ClientSession) -> None:
    async with (
        FakeWaveSpeed.running(api_key=KEY, schedule=lambda i: (0.01, 0.02)) as fake,
        WebhookReceiver.running() as receiver,
    ):
        fake.webhook_redirects["https://bot.example"] = receiver.base_url
        provider = WaveSpeedProvider(session, api_key=KEY, base_url=fake.base_url, policy=POLICY)
        handle = await provider.submit(hooked())
        await receiver.wait_for(1)  # posted by the fake's own timer, not by the test
        event = await provider.verify_webhook(*receiver.received[0])
        assert event is not None and event.status is not None
        assert event.status.state is JobState.COMPLETED and event.request_id == handle.request_id
        assert (await provider.status(handle)).state is JobState.COMPLETED


async def test_cancel_is_not_offered(provider: WaveSpeedProvider, fake: FakeWaveSpeed) -> None:
    assert await provider.cancel(JobHandle("wavespeed", "abc")) is False
    assert fake.requests == []


async def test_fake_rejects_what_the_document_forbids(session: aiohttp.ClientSession, fake: FakeWaveSpeed) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    good = {"image": IMAGE_URL, "prompt": "p"}
    for body in (
        {"image_url": IMAGE_URL, "prompt": "p"},
        {**good, "resolution": "512P"},
        {**good, "duration": "5"},
        {**good, "duration": 10},
    ):
        async with session.post(fake.base_url + SUBMIT_PATH, json=body, headers=auth) as resp:
            assert resp.status == 400, body
            assert (await resp.json())["code"] == 400
    ticket = {"filename": "a.png", "size": 3, "content_type": "image/png"}
    async with session.post(fake.base_url + "/api/v3/media/uploads", json=ticket, headers=auth) as resp:
        put_url = (await resp.json())["data"]["upload"]["url"]
    async with session.put(put_url, data=b"abc", headers={**auth, "Content-Type": "image/png"}) as resp:
        assert resp.status == 400
    assert fake.jobs == {}
    fake.faults.add("files", oversized(3 * 1024 * 1024))
    async with session.get(fake.base_url + "/cdn/predictions/none/output.mp4") as resp:
        assert resp.content_length == 3 * 1024 * 1024


async def test_the_key_never_reaches_errors_or_logs(
    provider: WaveSpeedProvider, fake: FakeWaveSpeed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[ProviderError] = []
    handle = await provider.submit(hooked())
    fake.faults.add("result", reply(503))
    await provider.status(handle)  # one logged retry
    fake.faults.add("submit", reset(after_handler=True))
    fake.faults.add("result", reply(401, envelope(None, 401, "Unauthorized")))
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: provider.submit(hooked(public_url=None)),
        lambda: provider.status(handle),
        lambda: provider.submit(spec(prompt="")),
    ]
    for attempt in attempts:
        with pytest.raises(ProviderError) as raised:
            await attempt()
        errors.append(raised.value)

    assert "retry" in caplog.text and KEY not in caplog.text
    assert "bot.example" not in caplog.text  # webhook URLs ride in the query, which is never logged
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
