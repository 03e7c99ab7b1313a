"""The whole service against the Pixazo and WaveSpeed fakes under injected faults.

Pixazo: FAILED (billed) and ERROR ("not charged"), 402, a bad key, a disabled model, 429/5xx bursts, slow
replies, resets, malformed JSON, and broken result files. WaveSpeed: failed/timeout jobs, resets, an
unknown submit outcome, a bad key. Each test states what the member ends up with and what the fake saw.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from tests.fakes.clips import png_bytes
from tests.fakes.faults import Fault, malformed, not_mp4, oversized, reply, reset, slow
from tests.fakes.pixazo_server import FakePixazo
from tests.fakes.wavespeed_server import FakeWaveSpeed, envelope
from tests.tracking_kit import (
    FAST,
    PUBLIC_IMAGE,
    delivered_once,
    pixazo_settings,
    refunded,
    running,
    wavespeed_settings,
)

QUICK = (0.05, 0.15)  # seconds queued, seconds processing


@pytest.fixture
async def pixazo() -> AsyncIterator[FakePixazo]:
    async with FakePixazo.running(api_key="pz-key-0a1b2c", schedule=lambda i: QUICK) as fake:
        yield fake


@pytest.fixture
async def wavespeed() -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed.running(api_key="ws-key-3d4e5f", schedule=lambda i: QUICK) as fake:
        yield fake


def alerts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "animabot.alerts"]


# -- Pixazo ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "fault", "times"),
    [
        pytest.param("status", reply(429, {"statusCode": 429, "message": "Rate limit"}, retry_after=0), 2, id="429"),
        pytest.param("status", reply(503), 3, id="503-burst"),
        pytest.param("status", reply(502), 1, id="502"),
        pytest.param("status", reply(500), 2, id="500"),
        pytest.param("status", reset(), 2, id="reset"),
        pytest.param("status", malformed(), 2, id="malformed-json"),
        pytest.param("submit", reply(429, retry_after=0), 1, id="submit-429"),
        pytest.param("submit", reply(503), 1, id="submit-503"),
        pytest.param("files", reply(503), 1, id="file-503"),
    ],
)
async def test_pixazo_transient_faults_are_retried_and_delivered(
    tmp_path: Path, pixazo: FakePixazo, route: str, fault: Fault, times: int
) -> None:
    pixazo.faults.add(route, fault, times=times)
    async with running(pixazo_settings(tmp_path, pixazo)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        await delivered_once(kit, job.id)
    assert pixazo.faults.pending(route) == 0
    assert len(pixazo.jobs) == 1  # a 429/503 submit was resent only because Pixazo certainly did not take it
    assert pixazo.seen("submit")[-1].json["image_url"] == PUBLIC_IMAGE


async def test_pixazo_slow_status_is_retried_and_delivered(tmp_path: Path, pixazo: FakePixazo) -> None:
    pixazo.faults.add("status", slow(1.0))
    async with running(pixazo_settings(tmp_path, pixazo), policy=replace(FAST, timeout=0.4)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        await delivered_once(kit, job.id)
    assert len(pixazo.seen("status")) >= 2


async def test_pixazo_failed_is_refunded_with_the_reason_and_counted_as_billed(
    tmp_path: Path, pixazo: FakePixazo
) -> None:
    pixazo.schedule = None
    async with running(pixazo_settings(tmp_path, pixazo)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        rid = await kit.request_id(job.id)
        await pixazo.fail(rid, "Prompt violates the content policy.")
        await refunded(kit, job.id, messages.REJECTED.format(reason="Prompt violates the content policy"))
        final = await kit.app.jobs.get(job.id)
        assert final is not None and final.provider_charged  # FAILED says nothing about billing: assume billed


async def test_pixazo_error_is_refunded_and_not_billed(tmp_path: Path, pixazo: FakePixazo) -> None:
    pixazo.schedule = None
    async with running(pixazo_settings(tmp_path, pixazo)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        rid = await kit.request_id(job.id)
        await pixazo.error(rid, "CUDA out of memory")
        await refunded(kit, job.id, messages.REJECTED.format(reason="CUDA out of memory"))
        final = await kit.app.jobs.get(job.id)
        assert final is not None and not final.provider_charged  # seed 003: ERROR is not charged
        assert await kit.app.jobs.spent_usd_micros_since(0) == 0  # nor counted against the daily budget


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        pytest.param("out_of_balance", "out of balance", id="402"),
        pytest.param("model_disabled", "not found or is disabled", id="model-disabled"),
        pytest.param("bad_key", "refused (401)", id="401"),
    ],
)
async def test_pixazo_operator_errors_refund_and_alert(
    tmp_path: Path, pixazo: FakePixazo, caplog: pytest.LogCaptureFixture, setup: str, needle: str
) -> None:
    overrides: dict[str, Any] = {}
    if setup == "bad_key":
        overrides["pixazo_api_key"] = "pz-wrong"
    else:
        setattr(pixazo, setup, True)
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(pixazo_settings(tmp_path, pixazo, **overrides)) as kit:
            job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
            await refunded(kit, job.id, messages.OPERATOR_PROBLEM)
    [alert] = alerts(caplog)
    assert needle in alert and job.id in alert
    assert len(pixazo.seen("submit")) == 1 and pixazo.jobs == {}


async def test_pixazo_without_a_public_image_url_is_an_operator_problem(
    tmp_path: Path, pixazo: FakePixazo, caplog: pytest.LogCaptureFixture
) -> None:
    # No PUBLIC_BASE_URL and a private image (a Telegram photo, say): Pixazo cannot fetch it.
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(pixazo_settings(tmp_path, pixazo)) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.OPERATOR_PROBLEM)
    assert any("PUBLIC_BASE_URL" in a for a in alerts(caplog))
    assert pixazo.seen("submit") == []  # refused before any request


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(reply(404, {"error": "Not Found"}), id="404"),
        pytest.param(not_mp4(), id="not-mp4"),
        pytest.param(oversized(300 * 1024), id="over-the-cap"),
    ],
)
async def test_pixazo_unusable_result_is_refunded(tmp_path: Path, pixazo: FakePixazo, fault: Fault) -> None:
    pixazo.faults.add("files", fault)
    async with running(pixazo_settings(tmp_path, pixazo, max_video_bytes=64 * 1024)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        await refunded(kit, job.id, messages.RESULT_UNUSABLE)
        final = await kit.app.jobs.get(job.id)
        assert final is not None and final.provider_charged  # Pixazo made (and billed) the clip
    assert len(pixazo.seen("files")) == 1


# -- WaveSpeed -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "fault", "times"),
    [
        pytest.param("result", reply(429, envelope(None, 429, "too many requests"), retry_after=0), 2, id="429"),
        pytest.param("result", reply(503, envelope(None, 503, "busy")), 3, id="503-burst"),
        pytest.param("result", reset(), 2, id="reset"),
        pytest.param("result", malformed(), 2, id="malformed-json"),
        pytest.param("files", reset(), 1, id="file-reset"),
    ],
)
async def test_wavespeed_transient_faults_are_retried_and_delivered(
    tmp_path: Path, wavespeed: FakeWaveSpeed, route: str, fault: Fault, times: int
) -> None:
    wavespeed.faults.add(route, fault, times=times)
    async with running(wavespeed_settings(tmp_path, wavespeed)) as kit:
        job = (await kit.animate(image=png_bytes())).job
        await delivered_once(kit, job.id)
    assert wavespeed.faults.pending(route) == 0
    assert len(wavespeed.seen("submit")) == 1
    # No public URL: the image went through WaveSpeed's upload, and the submit names the uploaded copy.
    [upload] = wavespeed.uploads.values()
    assert upload.data == png_bytes()
    assert wavespeed.seen("submit")[0].json["image"].startswith(wavespeed.base_url + "/media/")


@pytest.mark.parametrize("raw", ["failed", "timeout"])
async def test_wavespeed_failure_is_refunded_with_the_reason(
    tmp_path: Path, wavespeed: FakeWaveSpeed, raw: str
) -> None:
    wavespeed.schedule = None
    async with running(wavespeed_settings(tmp_path, wavespeed)) as kit:
        job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
        rid = await kit.request_id(job.id)
        await wavespeed.fail(rid, "inference failed: bad input", status=raw)
        await refunded(kit, job.id, messages.REJECTED.format(reason="inference failed: bad input"))


async def test_wavespeed_submit_reset_is_an_unknown_outcome_never_resent(
    tmp_path: Path, wavespeed: FakeWaveSpeed, caplog: pytest.LogCaptureFixture
) -> None:
    # The request reached WaveSpeed and created the task, then the connection dropped before the answer.
    wavespeed.faults.add("submit", reset(after_handler=True))
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(wavespeed_settings(tmp_path, wavespeed)) as kit:
            job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
            await refunded(kit, job.id, messages.UNKNOWN_OUTCOME)
    assert len(wavespeed.seen("submit")) == 1 and len(wavespeed.jobs) == 1
    assert any(job.id in a for a in alerts(caplog))


async def test_wavespeed_bad_key_refunds_and_alerts(
    tmp_path: Path, wavespeed: FakeWaveSpeed, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(wavespeed_settings(tmp_path, wavespeed, wavespeed_api_key="ws-wrong")) as kit:
            job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
            await refunded(kit, job.id, messages.OPERATOR_PROBLEM)
    [alert] = alerts(caplog)
    assert "refused (401)" in alert
    assert "ws-wrong" not in caplog.text
    assert wavespeed.jobs == {}
