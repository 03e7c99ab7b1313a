"""The whole service against the fal fake under injected faults: what the member ends up with, what fal saw.

Each test runs a real App (SQLite file, tracker, planner, FalProvider over aiohttp) against FakeFal on
127.0.0.1. Retries use a fast policy and the planner's gaps are scaled ÷10 (tests/tracking_kit.py), so the
faults cost milliseconds, not the production backoff.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from storage.jobs import Phase
from tests.fakes.clips import png_bytes, tiny_mp4
from tests.fakes.fal_faults import Delay, HttpError, InfraError, Malformed, Reset, rate_limited, unavailable
from tests.fakes.fal_jobs import Plan
from tests.fakes.fal_server import FakeFal
from tests.tracking_kit import FAST, START, delivered_once, fal_settings, refunded, running


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    # Every job is queued briefly, then runs briefly, unless a test drives it by hand.
    async with FakeFal.running(schedule=lambda sub: Plan(queue_seconds=0.05, processing_seconds=0.15)) as fake:
        yield fake


def status_calls(fake: FakeFal) -> int:
    return len(fake.calls("status"))


# -- transient faults on status and result calls: retried, then delivered -----------------------------


@pytest.mark.parametrize(
    ("route", "fault", "times"),
    [
        pytest.param("status", rate_limited(retry_after=0), 2, id="status-429-retry-after"),
        pytest.param("status", unavailable(503), 3, id="status-503-burst"),
        pytest.param("status", InfraError(502, "runner_incomplete_response", "runner cut off"), 2, id="status-502"),
        pytest.param("status", HttpError(500), 3, id="status-500-burst"),
        pytest.param("status", Reset(), 2, id="status-reset"),
        pytest.param("status", Malformed(), 2, id="status-malformed-json"),
        pytest.param("result", unavailable(503), 2, id="result-503"),
        pytest.param("result", Reset(), 1, id="result-reset"),
        pytest.param("result", rate_limited(retry_after=0), 1, id="result-429"),
    ],
)
async def test_transient_faults_are_retried_and_the_clip_delivered(
    tmp_path: Path, fal: FakeFal, route: str, fault: Any, times: int
) -> None:
    fal.faults.add(route, fault, times=times)
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await delivered_once(kit, job.id)
    assert fal.faults.pending(route) == 0  # every injected fault was met, and got past
    assert len(fal.calls("submit")) == 1
    assert len(fal.calls(route)) >= times + 1


async def test_a_5xx_burst_longer_than_one_call_is_waited_out(tmp_path: Path, fal: FakeFal) -> None:
    # Five 503s: more than one call's four attempts, so the tracker itself comes back a little later.
    fal.faults.add("status", unavailable(503), times=5)
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await delivered_once(kit, job.id)
    assert status_calls(fal) >= 6


async def test_slow_status_reply_times_out_and_is_retried(tmp_path: Path, fal: FakeFal) -> None:
    fal.faults.add("status", Delay(1.0), times=1)
    async with running(fal_settings(tmp_path, fal), policy=replace(FAST, timeout=0.4)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await delivered_once(kit, job.id)
    assert status_calls(fal) >= 2


# -- the job itself fails at fal: refund, and fal's reason in a sentence --------------------------------


async def test_completed_with_model_error_is_refunded_with_the_reason(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = lambda sub: Plan(0.05, 0.1, error="NSFW content detected in the input image")
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        text = messages.REJECTED.format(reason="NSFW content detected in the input image")
        await refunded(kit, job.id, text)
        final = await kit.app.jobs.get(job.id)
        assert final is not None and final.provider_charged  # a model failure may be billed to the operator
    assert fal.calls("result") == []  # the status said it failed: no result fetch, no download


async def test_completed_with_infrastructure_error_is_refunded_and_not_billed(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = lambda sub: Plan(0.05, 0.1, error="Runner crashed", error_type="runner_server_error")
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        text = messages.REJECTED.format(reason="Runner crashed [runner_server_error]")
        await refunded(kit, job.id, text)
        final = await kit.app.jobs.get(job.id)
        assert final is not None and not final.provider_charged  # fal does not bill its own 5xx


async def test_text_to_video_failure_names_the_reason(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = lambda sub: Plan(0.0, 0.1, error="prompt was flagged")
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(prompt="a dog in a red hat")).job
        job_final = await kit.finish(job.id)
        assert job_final.phase is Phase.FAILED
        assert kit.replies.seen(job.id).failed == [
            messages.REJECTED.format(reason="prompt was flagged") + " Your 1 credit were returned."
        ]
        assert await kit.balance() == START


# -- operator problems at submit: refund, "not your fault", an alert -----------------------------------


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        pytest.param(HttpError(402, body={"detail": "Insufficient balance"}), "out of balance", id="402"),
        pytest.param(HttpError(401, body={"detail": "Invalid key"}), "API key was refused (401)", id="401"),
        pytest.param(HttpError(403, body={"detail": "Forbidden"}), "API key was refused (403)", id="403"),
    ],
)
async def test_operator_errors_refund_and_alert(
    tmp_path: Path, fal: FakeFal, caplog: pytest.LogCaptureFixture, fault: HttpError, needle: str
) -> None:
    fal.faults.add("submit", fault)
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(fal_settings(tmp_path, fal)) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.OPERATOR_PROBLEM)
            final = await kit.app.jobs.get(job.id)
            assert final is not None and not final.provider_charged
    alerts = [r.getMessage() for r in caplog.records if r.name == "animabot.alerts"]
    assert len(alerts) == 1 and needle in alerts[0] and job.id in alerts[0]
    assert fal.api_key not in alerts[0]
    assert len(fal.calls("submit")) == 1
    assert fal.calls("status") == []


async def test_a_wrong_key_is_an_operator_error(tmp_path: Path, fal: FakeFal, caplog: pytest.LogCaptureFixture) -> None:
    # Not an injected reply: the fake refuses the key itself, as fal would.
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(fal_settings(tmp_path, fal, fal_key="fal-wrong-key")) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.OPERATOR_PROBLEM)
    assert any("refused (401)" in r.getMessage() for r in caplog.records if r.name == "animabot.alerts")
    assert "fal-wrong-key" not in caplog.text


async def test_a_rejected_submit_is_refunded_with_fals_reason(tmp_path: Path, fal: FakeFal) -> None:
    detail = [{"loc": ["body", "image_url"], "msg": "Could not download the image", "type": "image_load_error"}]
    fal.faults.add("submit", HttpError(422, body={"detail": detail}))
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        text = messages.REJECTED.format(reason="Could not download the image (image_url)")
        await refunded(kit, job.id, text)
    assert len(fal.calls("submit")) == 1  # a 422 is never retried
    assert fal.calls("status") == []


# -- the result is unusable: refund with a clear sentence -----------------------------------------------


async def test_result_link_404_is_refunded(tmp_path: Path, fal: FakeFal) -> None:
    fal.faults.add("file", HttpError(404, body={"detail": "File not found"}))
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)
    assert len(fal.calls("file")) == 1  # a gone link is not hammered


async def test_expired_result_file_is_refunded(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = None
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        rid = await kit.request_id(job.id)
        fal.complete(rid)
        fal.drop_file(rid)  # the CDN link died before the bot fetched it
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)


async def test_result_larger_than_the_cap_is_refunded(tmp_path: Path, fal: FakeFal) -> None:
    big = tiny_mp4() + b"\0" * (256 * 1024)
    fal.schedule = lambda sub: Plan(0.05, 0.1, content=big)
    async with running(fal_settings(tmp_path, fal, max_video_bytes=64 * 1024)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)
        assert not list((kit.app.settings.data_dir / "videos").glob("*"))  # no partial file left behind


async def test_result_that_is_not_an_mp4_is_refunded(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = lambda sub: Plan(0.05, 0.1, content=b"<html><body>Access denied</body></html>")
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)


async def test_result_reply_without_a_video_is_refunded(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = None
    async with running(fal_settings(tmp_path, fal)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        rid = await kit.request_id(job.id)
        fal.complete(rid, output={"video": None})
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)


# -- a job that never ends: the deadline cancels and refunds -------------------------------------------


async def test_a_job_that_never_ends_expires_is_cancelled_and_refunded(tmp_path: Path, fal: FakeFal) -> None:
    fal.schedule = None  # queued for ever
    async with running(fal_settings(tmp_path, fal, job_deadline_seconds=10)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await kit.wait_phase(job.id, Phase.QUEUED)  # the bot has seen it queued at fal
        rid = await kit.request_id(job.id)
        # Move the bot's clock past the deadline rather than wait 10 s, and let the tracker look.
        kit.clock.jump(11)
        kit.app.tracker.poke(job.id)
        await refunded(kit, job.id, messages.EXPIRED, phase=Phase.EXPIRED)
    assert len(fal.calls("cancel")) == 1
    assert fal.job(rid).cancel_requested


# -- a submit whose outcome is unknown: never resent, refunded, alerted --------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Delay(1.0), id="timeout-after-sending"),
        pytest.param(Reset(), id="reset"),
        pytest.param(Malformed(text="<html>gateway"), id="garbled-reply"),
    ],
)
async def test_unknown_submit_outcome_is_refunded_and_never_resent(
    tmp_path: Path, fal: FakeFal, caplog: pytest.LogCaptureFixture, fault: Any
) -> None:
    fal.faults.add("submit", fault)
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(fal_settings(tmp_path, fal), policy=replace(FAST, timeout=0.4)) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.UNKNOWN_OUTCOME)
            final = await kit.app.jobs.get(job.id)
            assert final is not None and final.provider_charged  # it may exist at fal and be billed
    assert len(fal.calls("submit")) == 1
    assert any(job.id in r.getMessage() for r in caplog.records if r.name == "animabot.alerts")
