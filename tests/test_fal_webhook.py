"""fal webhooks end to end: the fake signs and POSTs, a loopback receiver keeps raw bytes, FalProvider verifies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from providers.base import JobState
from providers.errors import TransientError
from providers.fal import FalProvider
from tests.fakes.fal_faults import unavailable
from tests.fakes.fal_jobs import Plan
from tests.fakes.fal_server import FakeFal
from tests.fakes.fal_testkit import ManualClock, Received, RecordingSleep, WebhookReceiver, fal_provider, i2v_spec
from tests.fakes.fal_webhooks import WebhookFaults


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeFal]:
    async with FakeFal.running(wall_clock=clock) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver.running() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def fal(session: aiohttp.ClientSession, fake: FakeFal, clock: ManualClock) -> FalProvider:
    return fal_provider(session, fake, RecordingSleep(), clock=clock)


async def finished_callbacks(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, count: int = 1, *, fail: str | None = None
) -> tuple[str, list[Received]]:
    """Submit with a webhook, finish the job on the fake, and return what the receiver got."""
    handle = await fal.submit(i2v_spec(webhook_url=receiver.url))
    before = len(fake.deliveries)
    if fail is None:
        fake.complete(handle.request_id)
    else:
        fake.fail(handle.request_id, fail)
    await fake.wait_deliveries(before + count)
    return handle.request_id, receiver.received[-count:]


async def test_signed_success_callback_carries_the_video(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver
) -> None:
    rid, [got] = await finished_callbacks(fal, fake, receiver)
    assert fake.calls("submit")[0].query == {"fal_webhook": receiver.url}
    assert fake.deliveries[0].status == 200
    event = await fal.verify_webhook(got.headers, got.body)
    assert event is not None
    assert (event.request_id, event.signed) == (rid, True)
    assert event.status is not None
    assert event.status.state is JobState.COMPLETED
    assert event.status.video is not None
    assert event.status.video.url == fake.job(rid).output["video"]["url"]
    [jwks_call] = fake.calls("jwks")
    assert "Authorization" not in jwks_call.headers  # the fal key stays with the queue host

    _, [second] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(second.headers, second.body) is not None
    assert len(fake.calls("jwks")) == 1  # cached


async def test_signed_failure_callback_carries_the_reason(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver
) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver, fail="Face detection failed")
    assert json.loads(got.body)["error"] == "Invalid status code: 422"
    event = await fal.verify_webhook(got.headers, got.body)
    assert event is not None
    assert event.status is not None
    assert (event.status.state, event.status.error) == (JobState.FAILED, "Face detection failed")


async def test_header_names_are_case_insensitive(fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver)
    lowered = {key.lower(): value for key, value in got.headers.items()}
    assert await fal.verify_webhook(lowered, got.body) is not None


async def test_forged_signature_is_refused_and_jwks_not_hammered(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver
) -> None:
    fake.webhook_faults = WebhookFaults(forge=True)
    for _ in range(3):
        _, [got] = await finished_callbacks(fal, fake, receiver)
        assert await fal.verify_webhook(got.headers, got.body) is None
    assert len(fake.calls("jwks")) == 1  # the refetch-on-failure is limited to once a minute


async def test_tampered_body_is_refused(fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver)
    tampered = got.body.replace(b'"OK"', b'"ERROR"')
    assert tampered != got.body
    assert await fal.verify_webhook(got.headers, tampered) is None


@pytest.mark.parametrize("skew", [-301, 301])
async def test_stale_or_future_timestamp_is_refused(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, clock: ManualClock, skew: int
) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver)
    clock.advance(-skew)
    assert await fal.verify_webhook(got.headers, got.body) is None
    clock.advance(skew)
    assert await fal.verify_webhook(got.headers, got.body) is not None


async def test_stale_delivery_from_the_fake_is_refused(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver
) -> None:
    fake.webhook_faults = WebhookFaults(stale_seconds=301)
    _, [got] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(got.headers, got.body) is None


async def test_rotated_key_is_fetched_once_a_minute_at_most(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, clock: ManualClock
) -> None:
    _, [first] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(first.headers, first.body) is not None
    fake.rotate_signing_key(keep_old=False)
    _, [rotated] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(rotated.headers, rotated.body) is None  # cache is seconds old: no refetch
    assert len(fake.calls("jwks")) == 1
    clock.advance(61)  # the callback is now 61 s old: still inside the 300 s window
    assert await fal.verify_webhook(rotated.headers, rotated.body) is not None  # refetched, new key found
    assert len(fake.calls("jwks")) == 2
    _, [fresh] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(fresh.headers, fresh.body) is not None
    assert len(fake.calls("jwks")) == 2


async def test_jwks_is_refetched_after_a_day(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, clock: ManualClock
) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(got.headers, got.body) is not None
    clock.advance(24 * 3600 + 1)
    _, [later] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(later.headers, later.body) is not None
    assert len(fake.calls("jwks")) == 2


async def test_duplicate_deliveries_verify_alike(fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver) -> None:
    fake.webhook_faults = WebhookFaults(duplicates=1)
    rid, got = await finished_callbacks(fal, fake, receiver, count=2)
    events = [await fal.verify_webhook(r.headers, r.body) for r in got]
    assert [e.request_id if e else None for e in events] == [rid, rid]


@pytest.mark.parametrize(
    "spoil",
    [
        {"X-Fal-Webhook-Signature": "zz"},
        {"X-Fal-Webhook-Signature": "ab" * 10},
        {"X-Fal-Webhook-Timestamp": "yesterday"},
        {"X-Fal-Webhook-Request-Id": "someone-elses-request"},
        {"X-Fal-Webhook-User-Id": ""},
    ],
)
async def test_malformed_headers_are_refused(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, spoil: dict[str, str]
) -> None:
    _, [got] = await finished_callbacks(fal, fake, receiver)
    headers = {key.lower(): value for key, value in got.headers.items()}
    headers.update({key.lower(): value for key, value in spoil.items()})
    assert await fal.verify_webhook(headers, got.body) is None


async def test_callback_for_another_fal_user_is_refused(
    session: aiohttp.ClientSession, fake: FakeFal, receiver: WebhookReceiver, clock: ManualClock
) -> None:
    fal = fal_provider(session, fake, RecordingSleep(), clock=clock, user_id="our-user")
    _, [got] = await finished_callbacks(fal, fake, receiver)
    assert await fal.verify_webhook(got.headers, got.body) is None


async def test_unreachable_jwks_fails_closed(
    fal: FalProvider, fake: FakeFal, receiver: WebhookReceiver, clock: ManualClock
) -> None:
    fake.faults.add("jwks", unavailable(503), times=2)  # both attempts of one fetch
    _, [got] = await finished_callbacks(fal, fake, receiver)
    # Never trusted without keys; "cannot verify now" (not "forged"), so the receiver can ask for a redelivery.
    with pytest.raises(TransientError, match="could not be fetched"):
        await fal.verify_webhook(got.headers, got.body)
    clock.advance(61)
    assert await fal.verify_webhook(got.headers, got.body) is not None  # JWKS is back after the fault burst


async def test_scheduled_job_calls_back_without_any_polling(
    session: aiohttp.ClientSession, receiver: WebhookReceiver
) -> None:
    async with FakeFal.running(schedule=lambda sub: Plan(queue_seconds=0.0, processing_seconds=0.05)) as fake:
        fal = fal_provider(session, fake, RecordingSleep())
        handle = await fal.submit(i2v_spec(webhook_url=receiver.url))
        [delivery] = await fake.wait_deliveries(1)
        assert delivery.request_id == handle.request_id
        event = await fal.verify_webhook(receiver.received[0].headers, receiver.received[0].body)
        assert event is not None
        assert event.status is not None
        assert event.status.state is JobState.COMPLETED
        assert fake.calls("status") == []
