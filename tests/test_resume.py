"""Restarts and deadlines, in process: a new App on the same SQLite file finishes what the old one left.

Each test stops an App at a chosen point of a job's life (or writes that point straight into storage, as a
killed process would have left it), builds a new App on the same file, and checks what the member is told,
what the ledger says, and what the fal fake was asked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from bot.config import Settings
from providers.base import JobHandle
from storage.db import Database
from storage.jobs import Claim, JobStore, NewJob, Phase
from storage.ledger import EntryKind, Ledger
from tests.fakes.clips import png_bytes, tiny_mp4
from tests.fakes.fal_faults import Delay
from tests.fakes.fal_jobs import IN_QUEUE, Plan, Submission
from tests.fakes.fal_server import FakeFal
from tests.harness import PLATFORM
from tests.tracking_kit import COST, START, Kit, delivered_once, fal_settings, refunded, running, wait_for

USER = "test:alice"


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    # Prompts containing "manual" wait for the test to move them; the rest finish on their own, quickly.
    def plan(sub: Submission) -> Plan | None:
        return None if "manual" in str(sub.body.get("prompt")) else Plan(queue_seconds=0.05, processing_seconds=0.1)

    async with FakeFal.running(schedule=plan) as fake:
        yield fake


async def at_provider(kit: Kit, job_id: str) -> str:
    """Wait until the job is recorded at fal; its request id."""
    return await kit.request_id(job_id)


# -- deadlines ------------------------------------------------------------------------------------


async def test_a_job_past_its_deadline_is_cancelled_expired_and_refunded(tmp_path: Path, fal: FakeFal) -> None:
    async with running(fal_settings(tmp_path, fal, job_deadline_seconds=60)) as kit:
        job = (await kit.animate(image=png_bytes(), prompt="manual: never finishes")).job
        rid = await at_provider(kit, job.id)
        assert await kit.balance() == START - COST
        kit.clock.jump(61)  # the provider never finishes; the next look finds the deadline passed
        kit.app.tracker.poke(job.id)
        await refunded(kit, job.id, messages.EXPIRED, phase=Phase.EXPIRED)
    assert [c.path.rsplit("/", 2)[-2] for c in fal.calls("cancel")] == [rid]
    assert fal.job(rid).cancel_requested
    assert len(fal.calls("submit")) == 1


async def test_the_default_deadline_is_twenty_minutes(tmp_path: Path, fal: FakeFal) -> None:
    async with running(fal_settings(tmp_path, fal)) as kit:
        before = time.time()
        job = (await kit.animate(image=png_bytes(), prompt="manual: check deadline")).job
        assert before + 1200 <= job.deadline_at <= time.time() + 1200
        await at_provider(kit, job.id)
        kit.clock.jump(1150)  # not yet: the job is still being tracked
        kit.app.tracker.poke(job.id)
        await kit.wait_phase(job.id, Phase.QUEUED)
        assert fal.calls("cancel") == []
        kit.clock.jump(60)
        kit.app.tracker.poke(job.id)
        await refunded(kit, job.id, messages.EXPIRED, phase=Phase.EXPIRED)


async def test_a_job_that_expired_while_the_bot_was_down_is_cancelled_on_start(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal, job_deadline_seconds=60)
    async with running(settings) as kit:
        job = (await kit.animate(image=png_bytes(), prompt="manual: outlives the bot")).job
        rid = await at_provider(kit, job.id)
    assert fal.state(rid) == IN_QUEUE
    async with running(settings) as kit:
        kit.clock.jump(120)  # the new process starts after the deadline
        kit.app.tracker.poke(job.id)
        await refunded(kit, job.id, messages.EXPIRED, phase=Phase.EXPIRED)
    assert fal.job(rid).cancel_requested
    assert len(fal.calls("submit")) == 1


# -- restarts mid-flight --------------------------------------------------------------------------


async def test_a_restart_while_tracking_resumes_and_delivers(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    async with running(settings) as kit:
        job = (await kit.animate(image=png_bytes(), prompt="manual: finishes while we are down")).job
        rid = await at_provider(kit, job.id)
        await kit.wait_phase(job.id, Phase.QUEUED)
    fal.start(rid)
    fal.complete(rid)
    async with running(settings) as kit:
        await delivered_once(kit, job.id)
        assert kit.replies.seen(job.id).progress == []  # the old process had said "queued"; nothing is repeated
    assert len(fal.calls("submit")) == 1
    assert len(fal.calls("result")) == 1


async def test_a_restart_in_the_middle_of_a_submit_never_resubmits(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    fal.faults.add("submit", Delay(30))  # fal takes the request, but the answer never arrives before we stop
    async with running(settings) as kit:
        job = (await kit.animate(image=png_bytes(), prompt="stuck in submit")).job
        await kit.wait_phase(job.id, Phase.SUBMITTING)
        await wait_for(lambda: len(fal.calls("submit")) == 1)
    async with running(settings) as kit:
        await refunded(kit, job.id, messages.UNKNOWN_OUTCOME)
        after = await kit.app.jobs.get(job.id)
        assert after is not None and after.provider_charged  # fal may bill it: it stays in the day's spend
    assert len(fal.calls("submit")) == 1


async def _stored_job(settings: Settings, job_id: str, *, kind: str = "text-to-video") -> tuple[Database, JobStore]:
    """Open the bot's database directly and record a held job, as a process that got that far would have."""
    db = await Database.open(settings.database_url)
    ledger, jobs = Ledger(db, starting_credits=settings.starting_credits), JobStore(db)
    await ledger.ensure_user(USER)
    await jobs.create(
        NewJob(
            id=job_id,
            user_id=USER,
            community_id=None,
            kind=kind,
            prompt=f"a paper boat drifts ({job_id})",
            options={"resolution": "any", "duration_s": 5, "aspect_ratio": "3:2", "provider": None},
            cost=COST,
            reply={"platform": PLATFORM},
            deadline_at=time.time() + 1200,
            dedupe_key=job_id,
            image_path=None,
            image_mime=None,
            image_url=None,
            webhook_token=None,
        )
    )
    return db, jobs


async def test_killed_after_writing_submitting_but_before_sending(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    db, jobs = await _stored_job(settings, "died-submitting")
    await Ledger(db, starting_credits=START).hold(USER, "died-submitting", COST, actor=USER)
    await jobs.advance("died-submitting", Phase.HELD)
    assert await jobs.begin_submit("died-submitting", usd_micros=50_000, cap_usd_micros=0, since=0) is Claim.CLAIMED
    await db.close()
    async with running(settings) as kit:
        await refunded(kit, "died-submitting", messages.UNKNOWN_OUTCOME)
    assert fal.calls("submit") == []


async def test_killed_between_recording_and_holding(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    db, _ = await _stored_job(settings, "died-received")
    await db.close()
    async with running(settings) as kit:
        job = await kit.finish("died-received")
        assert job.phase is Phase.DELIVERED
        assert await kit.ledger_kinds(job.id) == [EntryKind.HOLD, EntryKind.CAPTURE]
        assert await kit.balance() == START - COST
    assert len(fal.calls("submit")) == 1


async def test_killed_between_failing_and_refunding(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    db, jobs = await _stored_job(settings, "died-failing")
    await Ledger(db, starting_credits=START).hold(USER, "died-failing", COST, actor=USER)
    rejected = messages.REJECTED.format(reason="content policy")
    await jobs.advance("died-failing", Phase.FAILED, error=rejected)  # the release never happened
    await db.close()
    async with running(settings) as kit:
        await refunded(kit, "died-failing", rejected)
        assert await kit.app.ledger.open_holds() == []
    assert fal.requests == []


async def test_killed_while_delivering_a_clip_already_on_disk(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    db, jobs = await _stored_job(settings, "died-delivering")
    await Ledger(db, starting_credits=START).hold(USER, "died-delivering", COST, actor=USER)
    video = settings.data_dir / "videos" / "died-delivering.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(tiny_mp4())
    handle = JobHandle(provider="fal", request_id="req-gone", extra={}).to_json()
    for phase in (Phase.HELD, Phase.SUBMITTED, Phase.COMPLETED):
        await jobs.advance("died-delivering", phase, provider="fal", handle=handle)
    await jobs.advance("died-delivering", Phase.DELIVERING, video_path=str(video))
    await db.close()
    async with running(settings) as kit:
        await delivered_once(kit, "died-delivering")
    assert fal.requests == []  # the clip was on disk: the provider is not asked again


async def test_killed_after_capture_before_marking_delivered(tmp_path: Path, fal: FakeFal) -> None:
    settings = fal_settings(tmp_path, fal)
    db, jobs = await _stored_job(settings, "died-captured")
    ledger = Ledger(db, starting_credits=START)
    await ledger.hold(USER, "died-captured", COST, actor=USER)
    video = settings.data_dir / "videos" / "died-captured.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(tiny_mp4())
    for phase in (Phase.HELD, Phase.SUBMITTED, Phase.COMPLETED):
        await jobs.advance("died-captured", phase)
    await jobs.advance("died-captured", Phase.DELIVERING, video_path=str(video))
    await ledger.capture("died-captured")
    await db.close()
    async with running(settings) as kit:
        job = await kit.finish("died-captured")
        assert job.phase is Phase.DELIVERED
        assert kit.replies.deliveries["died-captured"] == 1  # sent again: the old process may have died first
        assert await kit.balance() == START - COST  # but charged once
        assert await kit.ledger_kinds(job.id) == [EntryKind.HOLD, EntryKind.CAPTURE]
