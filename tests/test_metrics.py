"""/metrics tells an operator what is in flight, what is held and what today cost, in Prometheus text."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.clips import png_bytes
from tests.fakes.fal_server import FakeFal
from tests.tracking_kit import fal_settings, running


def _metrics(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_follow_a_job_from_held_to_delivered(tmp_path: Path) -> None:
    async with FakeFal.running() as fal, running(fal_settings(tmp_path, fal), web_server=True) as kit:
        job = (await kit.animate(image=png_bytes(), prompt="the sea moves")).job
        rid = await kit.request_id(job.id)
        status, body = await kit.get("/metrics")
        assert status == 200
        during = _metrics(body.decode())
        assert during["animabot_credits_held"] == 4
        assert during["animabot_spend_usd_today"] == 0.2  # fal has the job: it may bill $0.20
        assert during['animabot_jobs{phase="delivered"}'] == 0
        fal.complete(rid)
        await kit.finish(job.id)
        after = _metrics((await kit.get("/metrics"))[1].decode())
        assert after["animabot_credits_held"] == 0
        assert after['animabot_jobs{phase="delivered"}'] == 1
        assert after["animabot_jobs_tracked"] == 0
