"""PROVIDERS=fal,pixazo,wavespeed through the whole service: a job goes to the next provider only when the
one before certainly did not take it, and is then delivered from there.

PUBLIC_BASE_URL points at the bot's own web server (plain http on 127.0.0.1), so Pixazo, which needs a
public image URL, gets the bot's /media/{token} link, and (being https-only for callbacks) is polled.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.config import Settings
from storage.jobs import Phase
from tests.fakes.clips import png_bytes
from tests.fakes.fal_faults import Delay, Fault, HttpError, rate_limited, unavailable
from tests.fakes.fal_jobs import Plan
from tests.fakes.fal_server import FakeFal
from tests.fakes.faults import reply
from tests.fakes.pixazo_server import FakePixazo
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.harness import make_settings
from tests.tracking_kit import FAST, START, delivered_once, refunded, running


@dataclass
class Fakes:
    fal: FakeFal
    pixazo: FakePixazo
    wavespeed: FakeWaveSpeed

    def submits(self) -> tuple[int, int, int]:
        return len(self.fal.calls("submit")), len(self.pixazo.seen("submit")), len(self.wavespeed.seen("submit"))


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with (
        FakeFal.running(schedule=lambda sub: Plan(0.05, 0.15)) as fal,
        FakePixazo.running(api_key="pz-key", schedule=lambda i: (0.05, 0.15)) as pixazo,
        FakeWaveSpeed.running(api_key="ws-key", schedule=lambda i: (0.05, 0.15)) as wavespeed,
    ):
        yield Fakes(fal, pixazo, wavespeed)


def settings(tmp_path: Path, f: Fakes, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "providers": ["fal", "pixazo", "wavespeed"],
        "fal_key": f.fal.api_key,
        "fal_base_url": f.fal.base_url,
        "fal_jwks_url": f.fal.jwks_url,
        "pixazo_api_key": f.pixazo.api_key,
        "pixazo_base_url": f.pixazo.base_url,
        "wavespeed_api_key": f.wavespeed.api_key,
        "wavespeed_base_url": f.wavespeed.base_url,
        "starting_credits": START,
    }
    return make_settings(tmp_path, **{**values, **overrides})


def alerts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "animabot.alerts"]


@pytest.mark.parametrize(
    ("fault", "operator"),
    [
        pytest.param(unavailable(503), False, id="503"),
        pytest.param(rate_limited(retry_after=30), False, id="429"),
        pytest.param(HttpError(401, body={"detail": "Invalid key"}), True, id="401"),
        pytest.param(HttpError(402, body={"detail": "Exhausted balance"}), True, id="402"),
    ],
)
async def test_fal_refusing_the_submit_fails_over_to_pixazo_which_fetches_the_image_from_the_bot(
    tmp_path: Path, fakes: Fakes, caplog: pytest.LogCaptureFixture, fault: Fault, operator: bool
) -> None:
    fakes.fal.faults.add("submit", fault)
    fakes.pixazo.schedule = None  # held in the queue until the test has looked at the image link
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(settings(tmp_path, fakes), web_server=True) as kit:
            job = (await kit.animate(image=png_bytes())).job
            rid = await kit.request_id(job.id)
            [submit] = fakes.pixazo.seen("submit")
            image_url = submit.json["image_url"]
            assert image_url == f"{kit.web_url}/media/{job.webhook_token}"
            assert "X-Webhook-URL" not in submit.headers  # Pixazo refuses http:// callbacks: it is polled instead
            assert await kit.get(image_url.removeprefix(kit.web_url)) == (200, png_bytes())  # what Pixazo fetches
            await fakes.pixazo.complete(rid)
            await delivered_once(kit, job.id)
            final = await kit.app.jobs.get(job.id)
            assert final is not None and final.provider == "pixazo"
            assert (await kit.get(f"/media/{job.webhook_token}"))[0] == 404  # gone once the job ended
    assert fakes.submits() == (1, 1, 0)
    assert fakes.fal.jobs == {}
    operator_alerts = [a for a in alerts(caplog) if "went to pixazo" in a]
    assert len(operator_alerts) == (1 if operator else 0)  # a saved job still tells the operator fal is broken


async def test_the_third_provider_takes_it_when_the_first_two_cannot(
    tmp_path: Path, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.fal.faults.add("submit", unavailable(502))
    fakes.pixazo.out_of_balance = True
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(settings(tmp_path, fakes), web_server=True) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await delivered_once(kit, job.id)
            final = await kit.app.jobs.get(job.id)
            assert final is not None and final.provider == "wavespeed"
    assert fakes.submits() == (1, 1, 1)
    [alert] = alerts(caplog)
    assert "pixazo" in alert and "out of balance" in alert


async def test_a_job_fal_rejects_is_not_failed_over(tmp_path: Path, fakes: Fakes) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "Prompt contains blocked content", "type": "content_policy"}]
    fakes.fal.faults.add("submit", HttpError(422, body={"detail": detail}))
    async with running(settings(tmp_path, fakes), web_server=True) as kit:
        job = (await kit.animate(image=png_bytes())).job
        reason = "Prompt contains blocked content (prompt)"
        await refunded(kit, job.id, messages.REJECTED.format(reason=reason))
    assert fakes.submits() == (1, 0, 0)  # another provider would refuse it too, and cost a second try


async def test_an_unknown_submit_outcome_is_not_failed_over(
    tmp_path: Path, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.fal.faults.add("submit", Delay(0.8))  # fal got the request; the answer never arrived in time
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(settings(tmp_path, fakes), policy=FAST.__class__(4, 0.01, 0.05, 0.3)) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.UNKNOWN_OUTCOME)
    assert fakes.submits() == (1, 0, 0)  # a second provider could mean two clips billed for one
    assert any("submit timed out" in a for a in alerts(caplog))


async def test_every_provider_down_refunds_with_try_again_later(
    tmp_path: Path, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.fal.faults.add("submit", unavailable(503))
    fakes.pixazo.faults.add("submit", reply(503), times=FAST.attempts)  # Pixazo's 503 submits are resent
    fakes.wavespeed.faults.add("submit", reply(503))
    with caplog.at_level(logging.ERROR, logger="animabot.alerts"):
        async with running(settings(tmp_path, fakes), web_server=True) as kit:
            job = (await kit.animate(image=png_bytes())).job
            await refunded(kit, job.id, messages.PROVIDERS_DOWN)
    assert fakes.submits() == (1, FAST.attempts, 1)
    assert alerts(caplog) == []  # busy providers are not the operator's problem


async def test_fals_breaker_opens_after_repeated_failures_and_later_jobs_skip_it(tmp_path: Path, fakes: Fakes) -> None:
    fakes.fal.faults.add("submit", unavailable(503), times=3)
    async with running(settings(tmp_path, fakes, starting_credits=40), web_server=True) as kit:
        for n in range(4):
            job = (await kit.animate(image=png_bytes(), prompt=f"waves, take {n}")).job
            final = await kit.finish(job.id)
            assert final.phase is Phase.DELIVERED and final.provider == "pixazo"
        assert kit.app.router.breaker("fal").open
    assert fakes.submits() == (3, 4, 0)  # the fourth job never touched fal
