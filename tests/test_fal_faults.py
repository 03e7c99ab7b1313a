"""FalProvider under injected faults: retries, Retry-After, resets, timeouts, auth, cancel, secrets in errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from providers.base import JobHandle, JobState
from providers.errors import JobRejected, OperatorError, ProviderError, SubmitOutcomeUnknown, TransientError
from providers.fal import FalProvider
from tests.fakes.fal_faults import Delay, Fault, HttpError, InfraError, Malformed, Reset, rate_limited, unavailable
from tests.fakes.fal_server import FakeFal
from tests.fakes.fal_testkit import RecordingSleep, fal_provider, i2v_spec

ATTEMPTS = 4


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal.running() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def fal(session: aiohttp.ClientSession, fake: FakeFal, sleeps: RecordingSleep) -> FalProvider:
    return fal_provider(session, fake, sleeps, attempts=ATTEMPTS, timeout=0.5)


async def test_429_retry_after_is_honoured(fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("status", rate_limited(7))
    assert (await fal.status(handle)).state is JobState.QUEUED
    assert sleeps.delays == [7.0]
    assert len(fake.calls("status")) == 2


async def test_5xx_bursts_on_status_and_result_are_retried(
    fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep
) -> None:
    handle = await fal.submit(i2v_spec())
    fake.complete(handle.request_id)
    for route in ("status", "result"):
        fake.faults.add(route, HttpError(500))
        fake.faults.add(route, unavailable(502))
        fake.faults.add(route, InfraError(503, "runner_connection_timeout", "Runner timed out"))
    assert (await fal.status(handle)).state is JobState.COMPLETED
    assert (await fal.result(handle)).size
    assert len(fake.calls("status")) == len(fake.calls("result")) == 4
    assert len(sleeps.delays) == 6


async def test_a_burst_longer_than_the_attempts_is_transient(
    fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep
) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("status", InfraError(503, "runner_scheduling_failure", "No runner available"), times=10)
    with pytest.raises(TransientError) as caught:
        await fal.status(handle)
    assert caught.value.status == 503
    assert "No runner available [runner_scheduling_failure]" in caught.value.detail
    assert len(fake.calls("status")) == ATTEMPTS
    assert len(sleeps.delays) == ATTEMPTS - 1


async def test_reset_on_status_is_retried(fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep) -> None:
    handle = await fal.submit(i2v_spec())
    # aiohttp itself replays an idempotent GET once after a dropped keep-alive connection, so two resets
    # are needed for the provider's own retry to be exercised.
    fake.faults.add("status", Reset(), times=2)
    assert (await fal.status(handle)).state is JobState.QUEUED
    assert len(fake.calls("status")) == 3
    assert sleeps.delays


async def test_timeout_on_status_is_retried(fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("status", Delay(3.0))
    assert (await fal.status(handle)).state is JobState.QUEUED
    assert len(fake.calls("status")) == 2
    assert len(sleeps.delays) == 1


async def test_malformed_json_on_status_is_retried(fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("status", Malformed(status=202))
    assert (await fal.status(handle)).state is JobState.QUEUED
    assert len(fake.calls("status")) == 2


@pytest.mark.parametrize("fault", [Reset(), Delay(3.0), Malformed()], ids=["reset", "timeout", "malformed"])
async def test_lost_submit_reply_is_unknown_and_never_resent(
    fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep, fault: Fault
) -> None:
    fake.faults.add("submit", fault)
    with pytest.raises(SubmitOutcomeUnknown):
        await fal.submit(i2v_spec())
    assert len(fake.calls("submit")) == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("fault", [rate_limited(3), InfraError(503, "runner_scheduling_failure")], ids=["429", "503"])
async def test_refused_submit_is_transient_and_not_resent(
    fal: FalProvider, fake: FakeFal, sleeps: RecordingSleep, fault: Fault
) -> None:
    fake.faults.add("submit", fault)
    with pytest.raises(TransientError) as caught:
        await fal.submit(i2v_spec())
    assert caught.value.status in (429, 503)
    assert len(fake.calls("submit")) == 1
    assert sleeps.delays == []


async def test_wrong_key_is_an_operator_error(session: aiohttp.ClientSession, fake: FakeFal) -> None:
    wrong = "fal-wrong-key-5f0c:aa11bb22cc33"
    fal = fal_provider(session, fake, RecordingSleep(), api_key=wrong)
    with pytest.raises(OperatorError) as caught:
        await fal.submit(i2v_spec())
    assert caught.value.status == 401
    assert wrong not in str(caught.value)
    assert fake.calls("submit")[0].headers["Authorization"] == f"Key {wrong}"
    assert fake.jobs == {}


async def test_validation_error_from_fal_is_rejected_with_its_message(fal: FalProvider, fake: FakeFal) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "Prompt is too long (max 2500 chars)", "type": "value_error"}]
    fake.faults.add("submit", HttpError(422, body={"detail": detail}, headers={"X-Fal-Retryable": "false"}))
    with pytest.raises(JobRejected) as caught:
        await fal.submit(i2v_spec())
    assert caught.value.detail == "Prompt is too long (max 2500 chars) (prompt)"
    assert caught.value.status == 422


# -- cancel -----------------------------------------------------------------------------------------


async def test_cancel_a_queued_job(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    assert await fal.cancel(handle) is True
    [sent] = fake.calls("cancel")
    assert (sent.method, sent.path) == ("PUT", f"/fal-ai/kandinsky5-pro/requests/{handle.request_id}/cancel")
    status = await fal.status(handle)
    assert status.state is JobState.FAILED
    assert "cancelled" in (status.error or "")


async def test_cancel_a_running_job(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.start(handle.request_id)
    assert await fal.cancel(handle) is True


async def test_cancel_outcomes_that_are_not_a_cancellation(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.complete(handle.request_id)
    assert await fal.cancel(handle) is False  # 400 ALREADY_COMPLETED
    assert await fal.cancel(JobHandle("fal", "no-such-id", {"model": "fal-ai/kandinsky5-pro/image-to-video"})) is False


async def test_cancel_answered_ok(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("cancel", HttpError(200, body={"status": "OK"}))
    assert await fal.cancel(handle) is True


@pytest.mark.parametrize(
    "fault", [unavailable(503), Reset(), HttpError(401, body={"detail": "Invalid key"})], ids=["5xx", "reset", "401"]
)
async def test_cancel_never_raises(fal: FalProvider, fake: FakeFal, fault: Fault) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("cancel", fault, times=5)
    assert await fal.cancel(handle) is False


# -- secrets ----------------------------------------------------------------------------------------


async def test_the_key_never_reaches_errors_or_logs(
    fal: FalProvider, fake: FakeFal, caplog: pytest.LogCaptureFixture
) -> None:
    key = fake.api_key
    echo = [{"loc": ["header", "authorization"], "msg": f"Key {key} is not allowed here", "type": "value_error"}]
    raised: list[ProviderError] = []
    with caplog.at_level(logging.DEBUG):
        handle = await fal.submit(i2v_spec())
        fake.faults.add("status", HttpError(500, body={"detail": f"upstream saw Key {key}"}), times=ATTEMPTS)
        fake.faults.add("result", HttpError(422, body={"detail": echo}))
        fake.faults.add("cancel", HttpError(400, body={"detail": f"bad {key}"}), times=2)
        fake.faults.add("submit", HttpError(403, body={"detail": key}))
        for call in (fal.status(handle), fal.result(handle), fal.submit(i2v_spec())):
            try:
                await call
            except ProviderError as exc:
                raised.append(exc)
        assert await fal.cancel(handle) is False
        fake.fail(handle.request_id, f"runner got {key}", error_type="runner_server_error")
        failed = await fal.status(handle)
    assert [type(e) for e in raised] == [TransientError, JobRejected, OperatorError]
    assert key not in (failed.error or "")
    assert "[redacted]" in (failed.error or "")
    for exc in raised:
        assert key not in str(exc)
        assert key not in exc.detail
    assert key not in caplog.text
    assert any("not done" in r.message for r in caplog.records)  # the cancel refusal was logged, scrubbed
