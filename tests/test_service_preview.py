"""The whole service path with the offline preview provider: hold, render, deliver, capture."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import UserError
from bot.media import probe_video
from storage.jobs import Phase
from tests.fakes.clips import png_bytes
from tests.harness import make_settings, running_app


async def test_image_job_is_delivered_and_charged_once(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, starting_credits=10)) as h:
        submitted = await h.animate(image=png_bytes(128, 96))
        assert not submitted.joined
        assert submitted.balance == 6  # 4 credits held at once
        job = await h.finish(submitted.job.id)
        assert job.phase is Phase.DELIVERED
        seen = h.replies.seen(job.id)
        assert seen.delivered is not None and not seen.failed
        info = probe_video(seen.delivered.path)
        assert info.codec == "h264" and abs(info.duration_s - 5.0) < 0.5
        assert await h.balance() == 6
        hold = await h.app.ledger.get_hold(job.id)
        assert hold is not None and hold.state == "captured"
        assert job.image_path is not None and not Path(job.image_path).exists()  # the member's picture is not kept


async def test_double_click_joins_the_first_job(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, starting_credits=10)) as h:
        first = await h.animate(image=png_bytes(128, 96))
        second = await h.animate(image=png_bytes(128, 96))
        assert second.joined and second.job.id == first.job.id
        await h.finish(first.job.id)
        assert await h.balance() == 6


async def test_too_few_credits_is_refused_without_charge(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, starting_credits=3)) as h:
        with pytest.raises(UserError, match="costs 4 credits and you have 3"):
            await h.animate(image=png_bytes(128, 96))
        assert await h.balance() == 3


async def test_a_failed_job_does_not_keep_the_picture_either(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, starting_credits=10, max_video_bytes=1024)) as h:
        submitted = await h.animate(image=png_bytes(128, 96))
        job = await h.finish(submitted.job.id)
        assert job.phase is Phase.FAILED  # the rendered clip is over the 1 kB cap
        assert h.replies.seen(job.id).failed
        assert job.image_path is not None and not Path(job.image_path).exists()
        assert await h.balance() == 10
