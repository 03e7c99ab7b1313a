"""Push tracking end to end: each fake calls back to the bot's own web server on 127.0.0.1.

PUBLIC_BASE_URL is the bot's server (http) for fal and WaveSpeed; for Pixazo, which accepts only https
callbacks, it is an https name that the fake redirects to the bot (`webhook_redirects`). The planner runs
at its real scale here, so with a webhook registered its next look is 30 s away: a job that finishes in
well under a second was noticed through the callback, not through a poll.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.jobs import Phase
from storage.ledger import EntryKind
from tests.fakes.clips import png_bytes
from tests.fakes.fal_faults import unavailable
from tests.fakes.fal_server import FakeFal
from tests.fakes.fal_webhooks import WebhookFaults
from tests.fakes.pixazo_server import FakePixazo
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.tracking_kit import (
    PUBLIC_IMAGE,
    Kit,
    delivered_once,
    fal_settings,
    pixazo_settings,
    running,
    wavespeed_settings,
)

REAL_SCALE = 1.0  # the planner's production gaps: the safety-net poll is 30 s away
QUICK = 2.0  # seconds: far below any poll the planner would make


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal.running() as fake:  # jobs move only when a test says so
        yield fake


@pytest.fixture
async def fal_kit(tmp_path: Path, fal: FakeFal) -> AsyncIterator[Kit]:
    async with running(fal_settings(tmp_path, fal), web_server=True, planner_scale=REAL_SCALE) as kit:
        yield kit


async def fal_job(kit: Kit, fal: FakeFal, prompt: str = "the sea moves") -> tuple[str, str]:
    """Start an image job; return the bot's job id and fal's request id."""
    job = (await kit.animate(image=png_bytes(), prompt=prompt)).job
    rid = await kit.request_id(job.id)
    await kit.wait_phase(job.id, Phase.SUBMITTED)
    return job.id, rid


def status_calls(fal: FakeFal, rid: str) -> int:
    return sum(1 for r in fal.calls("status") if rid in r.path)


# -- fal: ED25519-signed callbacks -------------------------------------------------------------------------


async def test_fal_signed_webhook_delivers_at_once_without_polling(fal_kit: Kit, fal: FakeFal) -> None:
    job_id, rid = await fal_job(fal_kit, fal)
    [submit] = fal.calls("submit")
    token = (await fal_kit.app.jobs.get(job_id)).webhook_token  # type: ignore[union-attr]
    assert submit.query["fal_webhook"] == f"{fal_kit.web_url}/hooks/{token}"
    assert status_calls(fal, rid) == 0  # nothing polled while waiting for the callback
    started = time.monotonic()
    fal.complete(rid)
    await delivered_once(fal_kit, job_id)
    assert time.monotonic() - started < QUICK
    [delivery] = await fal.wait_deliveries(1)
    assert delivery.status == 200
    assert status_calls(fal, rid) == 1  # the one status call that confirms the callback
    assert len(fal.calls("jwks")) == 1  # keys fetched once, then cached


async def test_duplicate_webhooks_deliver_once_and_charge_once(fal_kit: Kit, fal: FakeFal) -> None:
    fal.webhook_faults = WebhookFaults(duplicates=2)
    job_id, rid = await fal_job(fal_kit, fal)
    fal.complete(rid)
    deliveries = await fal.wait_deliveries(3)
    assert [d.status for d in deliveries] == [200, 200, 200]
    await delivered_once(fal_kit, job_id)  # one video, one capture
    assert status_calls(fal, rid) == 1
    assert len(fal.calls("result")) == 1


async def test_a_callback_for_a_finished_job_is_harmless(fal_kit: Kit, fal: FakeFal) -> None:
    job_id, rid = await fal_job(fal_kit, fal)
    fal.complete(rid)
    await delivered_once(fal_kit, job_id)
    calls = len(fal.requests)
    await fal.resend_webhook(rid)  # fal retries, or a late copy arrives
    assert fal.deliveries[-1].status == 200
    assert len(fal.requests) == calls  # no status call, no result fetch, no download
    assert fal_kit.replies.deliveries[job_id] == 1
    assert await fal_kit.ledger_kinds(job_id) == [EntryKind.HOLD, EntryKind.CAPTURE]


async def test_unreachable_signing_keys_still_deliver_promptly(fal_kit: Kit, fal: FakeFal) -> None:
    # fal's key set is down: the callback cannot be verified, so it is answered 503 (fal will redeliver),
    # yet its unguessable URL was right, so it still wakes the job and one status call decides.
    fal.faults.add("jwks", unavailable(503), times=50)
    job_id, rid = await fal_job(fal_kit, fal)
    started = time.monotonic()
    fal.complete(rid)
    await delivered_once(fal_kit, job_id)
    assert time.monotonic() - started < QUICK
    [delivery] = await fal.wait_deliveries(1)
    assert delivery.status == 503
    assert status_calls(fal, rid) == 1


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(WebhookFaults(forge=True), id="forged-signature"),
        pytest.param(WebhookFaults(stale_seconds=600), id="replayed-old-timestamp"),
        pytest.param(WebhookFaults(signature="zz"), id="garbage-signature"),
        pytest.param(WebhookFaults(signature=""), id="no-signature"),
    ],
)
async def test_forged_or_stale_fal_webhooks_are_refused_and_change_nothing(
    fal_kit: Kit, fal: FakeFal, faults: WebhookFaults
) -> None:
    fal.webhook_faults = faults
    job_id, rid = await fal_job(fal_kit, fal)
    fal.complete(rid)
    deliveries = await fal.wait_deliveries(1)
    assert {d.status for d in deliveries} == {401}
    job = await fal_kit.app.jobs.get(job_id)
    assert job is not None and job.phase is Phase.SUBMITTED  # the bot did not even look
    assert status_calls(fal, rid) == 0
    assert fal_kit.replies.seen(job_id).delivered is None
    # The genuine callback still works afterwards.
    fal.webhook_faults = WebhookFaults()
    await fal.resend_webhook(rid)
    await delivered_once(fal_kit, job_id)


async def test_a_validly_signed_callback_for_another_job_is_refused(fal_kit: Kit, fal: FakeFal) -> None:
    job_a, rid_a = await fal_job(fal_kit, fal)
    _, rid_b = await fal_job(fal_kit, fal, prompt="another clip")
    assert rid_b != rid_a
    token_a = (await fal_kit.app.jobs.get(job_a)).webhook_token  # type: ignore[union-attr]
    body = json.dumps({"request_id": rid_b, "gateway_request_id": rid_b, "status": "OK", "payload": {}}).encode()
    stamp = str(int(time.time()))
    message = "\n".join((rid_b, fal.user_id, stamp, hashlib.sha256(body).hexdigest())).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Fal-Webhook-Request-Id": rid_b,
        "X-Fal-Webhook-User-Id": fal.user_id,
        "X-Fal-Webhook-Timestamp": stamp,
        "X-Fal-Webhook-Signature": fal.signer.sign(message),
    }
    assert await fal_kit.post(f"/hooks/{token_a}", body, headers) == 400  # genuine, but not this job's
    assert status_calls(fal, rid_a) == 0


async def test_unknown_token_is_404(fal_kit: Kit) -> None:
    assert await fal_kit.post("/hooks/not-a-real-token", b"{}") == 404
    assert (await fal_kit.get("/media/not-a-real-token"))[0] == 404


async def test_media_serves_the_input_image_only_while_the_job_is_in_flight(fal_kit: Kit, fal: FakeFal) -> None:
    job_id, rid = await fal_job(fal_kit, fal)
    token = (await fal_kit.app.jobs.get(job_id)).webhook_token  # type: ignore[union-attr]
    assert token is not None and len(token) >= 32  # unguessable: 24 random bytes
    assert await fal_kit.get(f"/media/{token}") == (200, png_bytes())
    fal.complete(rid)
    await delivered_once(fal_kit, job_id)
    assert (await fal_kit.get(f"/media/{token}"))[0] == 404


async def test_health(fal_kit: Kit) -> None:
    status, body = await fal_kit.get("/healthz")
    assert status == 200
    assert json.loads(body) == {"ok": True, "jobs_in_flight": 0, "providers": ["fal"]}


# -- WaveSpeed: HMAC-signed callbacks ----------------------------------------------------------------------


@pytest.fixture
async def wavespeed() -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed.running(api_key="ws-key") as fake:
        yield fake


@pytest.fixture
async def ws_kit(tmp_path: Path, wavespeed: FakeWaveSpeed) -> AsyncIterator[Kit]:
    settings = wavespeed_settings(tmp_path, wavespeed)
    async with running(settings, web_server=True, planner_scale=REAL_SCALE) as kit:
        yield kit


async def ws_job(kit: Kit) -> tuple[str, str]:
    job = (await kit.animate(image=png_bytes(), image_public_url=PUBLIC_IMAGE)).job
    rid = await kit.request_id(job.id)
    await kit.wait_phase(job.id, Phase.SUBMITTED)
    return job.id, rid


def ws_status_calls(fake: FakeWaveSpeed, rid: str) -> int:
    return sum(1 for r in fake.seen("result") if rid in r.path)


async def test_wavespeed_signed_webhook_delivers_at_once(ws_kit: Kit, wavespeed: FakeWaveSpeed) -> None:
    job_id, rid = await ws_job(ws_kit)
    token = (await ws_kit.app.jobs.get(job_id)).webhook_token  # type: ignore[union-attr]
    assert wavespeed.seen("submit")[0].query["webhook"] == f"{ws_kit.web_url}/hooks/{token}"
    started = time.monotonic()
    await wavespeed.complete(rid)  # posts the signed callback and waits for the bot's answer
    await delivered_once(ws_kit, job_id)
    assert time.monotonic() - started < QUICK
    assert [w.status for w in wavespeed.webhooks] == [200]
    assert ws_status_calls(wavespeed, rid) == 1
    assert len(wavespeed.seen("secret")) == 1


@pytest.mark.parametrize("spoil", ["forged", "stale"])
async def test_forged_or_stale_wavespeed_webhooks_are_refused(
    ws_kit: Kit, wavespeed: FakeWaveSpeed, spoil: str
) -> None:
    job_id, rid = await ws_job(ws_kit)
    wavespeed.auto_webhooks = False
    await wavespeed.complete(rid)
    await wavespeed.deliver_webhook(rid, forged=spoil == "forged", stale=spoil == "stale")
    assert [w.status for w in wavespeed.webhooks] == [401]
    assert ws_status_calls(wavespeed, rid) == 0
    job = await ws_kit.app.jobs.get(job_id)
    assert job is not None and job.phase is Phase.SUBMITTED
    await wavespeed.deliver_webhook(rid, copies=2)  # the genuine one, twice
    assert [w.status for w in wavespeed.webhooks] == [401, 200, 200]
    await delivered_once(ws_kit, job_id)


# -- Pixazo: unsigned callbacks are hints, confirmed by one status call -----------------------------------


@pytest.fixture
async def pixazo() -> AsyncIterator[FakePixazo]:
    async with FakePixazo.running(api_key="pz-key") as fake:
        yield fake


@pytest.fixture
async def pz_kit(tmp_path: Path, pixazo: FakePixazo) -> AsyncIterator[Kit]:
    settings = pixazo_settings(tmp_path, pixazo, public_base_url="https://bot.example")
    async with running(settings, web_server=True, planner_scale=REAL_SCALE) as kit:
        assert kit.web_url is not None
        pixazo.webhook_redirects["https://bot.example"] = kit.web_url  # "DNS" for the https name
        yield kit


def pz_status_calls(fake: FakePixazo, rid: str) -> int:
    return sum(1 for r in fake.seen("status") if rid in r.path)


async def test_pixazo_callback_is_confirmed_by_a_status_call(pz_kit: Kit, pixazo: FakePixazo) -> None:
    job = (await pz_kit.animate(image=png_bytes())).job
    rid = await pz_kit.request_id(job.id)
    await pz_kit.wait_phase(job.id, Phase.SUBMITTED)
    [submit] = pixazo.seen("submit")
    assert submit.headers["X-Webhook-URL"] == f"https://bot.example/hooks/{job.webhook_token}"
    assert submit.json["image_url"] == f"https://bot.example/media/{job.webhook_token}"
    assert pz_status_calls(pixazo, rid) == 0
    started = time.monotonic()
    await pixazo.complete(rid)
    await delivered_once(pz_kit, job.id)
    assert time.monotonic() - started < QUICK
    assert [w.status for w in pixazo.webhooks] == [200]
    assert pz_status_calls(pixazo, rid) == 1


async def test_a_false_pixazo_callback_is_not_believed(pz_kit: Kit, pixazo: FakePixazo) -> None:
    job = (await pz_kit.animate(image=png_bytes())).job
    rid = await pz_kit.request_id(job.id)
    await pz_kit.wait_phase(job.id, Phase.SUBMITTED)
    # Anyone holding the URL could post this: it claims the clip is done, with a link of its choosing.
    lie: dict[str, Any] = {
        "request_id": rid,
        "status": "COMPLETED",
        "output": {"media_url": ["https://evil.example/clip.mp4"], "media_type": "video/mp4"},
    }
    await pixazo.deliver_webhook(rid, body=lie)
    assert [w.status for w in pixazo.webhooks] == [200]
    await pz_kit.wait_phase(job.id, Phase.QUEUED)  # the confirming status call said QUEUED
    assert pz_status_calls(pixazo, rid) == 1
    final = await pz_kit.app.jobs.get(job.id)
    assert final is not None and final.result_url is None
    await pixazo.complete(rid)
    await delivered_once(pz_kit, job.id)
    assert pz_status_calls(pixazo, rid) == 2
    final = await pz_kit.app.jobs.get(job.id)
    assert final is not None and final.result_url == f"{pixazo.base_url}/r2/v1/{rid}/output.mp4"


async def test_pixazo_with_an_http_public_url_is_polled_not_called_back(tmp_path: Path, pixazo: FakePixazo) -> None:
    pixazo.schedule = lambda i: (0.05, 0.15)
    async with running(pixazo_settings(tmp_path, pixazo), web_server=True) as kit:
        assert kit.app.settings.public_base_url == kit.web_url  # http://127.0.0.1:port
        job = (await kit.animate(image=png_bytes())).job
        await delivered_once(kit, job.id)
    [submit] = pixazo.seen("submit")
    assert "X-Webhook-URL" not in submit.headers  # Pixazo would refuse the whole submit over an http:// callback
    assert pixazo.webhooks == []
