"""JobStore on a real SQLite file: phases written once and in order, reply targets kept, duplicates joined."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database
from storage.jobs import FINAL, Claim, DuplicateJob, JobStore, NewJob, Phase
from storage.ledger import Ledger

ALICE = "discord:111"
T0 = 1_800_000_000.0
# What a restarted bot needs to answer a Discord slash command: the interaction token and when it lapses.
DISCORD_TARGET = {
    "platform": "discord",
    "guild_id": "9",
    "channel_id": "42",
    "message_id": "77",
    "interaction_token": "aW50ZXJhY3Rpb24.token",
    "interaction_expires_at": T0 + 15 * 60,
}


class Clock:
    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> float:
        return T0 + next(self._ticks)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    db = await Database.open(f"sqlite:///{tmp_path}/jobs.db")
    try:
        for user in (ALICE, "telegram:5"):
            await Ledger(db, starting_credits=0).ensure_user(user)
        yield JobStore(db, clock=Clock())
    finally:
        await db.close()


def new_job(job_id: str, *, user: str = ALICE, dedupe: str | None = None, **kw: Any) -> NewJob:
    values: dict[str, Any] = {
        "id": job_id,
        "user_id": user,
        "community_id": "guild:9",
        "kind": "image-to-video",
        "prompt": "the lighthouse beam sweeps",
        "options": {"resolution": "512P", "duration_s": 5, "provider": None},
        "cost": 4,
        "reply": DISCORD_TARGET,
        "deadline_at": T0 + 1200,
        "dedupe_key": dedupe,
        "image_path": f"/data/inputs/{job_id}.png",
        "image_mime": "image/png",
        "image_url": None,
        "webhook_token": None,
    }
    values.update(kw)
    return NewJob(**values)


async def test_a_new_job_is_received_with_everything_a_restart_needs(store: JobStore) -> None:
    job = await store.create(new_job("j1", dedupe="k1", webhook_token="tok-1"))
    assert job.phase is Phase.RECEIVED
    assert job.reply == DISCORD_TARGET
    assert (job.community_id, job.kind, job.cost, job.deadline_at) == ("guild:9", "image-to-video", 4, T0 + 1200)
    assert (job.image_path, job.image_mime, job.webhook_token) == ("/data/inputs/j1.png", "image/png", "tok-1")
    assert job.options == {"resolution": "512P", "duration_s": 5, "provider": None}
    assert await store.get("j1") == job
    assert await store.by_webhook_token("tok-1") == job
    assert await store.events("j1") == [("received", "")]


async def test_phases_are_written_in_order_with_provider_details(store: JobStore) -> None:
    await store.create(new_job("j1"))
    handle = '{"provider": "fal", "request_id": "req-1", "extra": {}}'
    assert await store.advance("j1", Phase.HELD, only_from=frozenset({Phase.RECEIVED}))
    assert await store.advance("j1", Phase.SUBMITTING, only_from=frozenset({Phase.HELD}))
    assert await store.advance(
        "j1", Phase.SUBMITTED, detail="fal", provider="fal", handle=handle, usd_micros=200_000, provider_charged=True
    )
    assert await store.advance("j1", Phase.QUEUED, queue_position=3)
    assert await store.advance("j1", Phase.PROCESSING, queue_position=None, started_at=T0 + 50)
    assert await store.advance("j1", Phase.COMPLETED, result_url="https://cdn/x.mp4", finished_at=T0 + 90)
    assert await store.advance("j1", Phase.DELIVERING, video_path="/data/videos/j1.mp4", detail="h264")
    assert await store.advance("j1", Phase.DELIVERED)
    job = await store.get("j1")
    assert job is not None and job.phase is Phase.DELIVERED
    assert (job.provider, job.handle, job.usd_micros, job.provider_charged) == ("fal", handle, 200_000, True)
    assert (job.result_url, job.video_path, job.started_at, job.finished_at) == (
        "https://cdn/x.mp4",
        "/data/videos/j1.mp4",
        T0 + 50,
        T0 + 90,
    )
    assert await store.events("j1") == [
        ("received", ""),
        ("held", ""),
        ("submitting", ""),
        ("submitted", "fal"),
        ("queued", ""),
        ("processing", ""),
        ("completed", ""),
        ("delivering", "h264"),
        ("delivered", ""),
    ]


@pytest.mark.parametrize("final", sorted(FINAL))
async def test_a_final_phase_is_final(store: JobStore, final: Phase) -> None:
    await store.create(new_job("j1"))
    assert await store.advance("j1", final)
    for phase in Phase:
        assert not await store.advance("j1", phase), phase
    job = await store.get("j1")
    assert job is not None and job.phase is final
    assert len(await store.events("j1")) == 2


async def test_only_from_guards_a_transition(store: JobStore) -> None:
    await store.create(new_job("j1"))
    assert not await store.advance("j1", Phase.SUBMITTING, only_from=frozenset({Phase.HELD}))
    assert not await store.advance("nope", Phase.HELD)
    job = await store.get("j1")
    assert job is not None and job.phase is Phase.RECEIVED


async def test_two_steps_racing_to_submit_one_job_only_one_wins(store: JobStore) -> None:
    await store.create(new_job("j1"))
    await store.advance("j1", Phase.HELD)
    wins = await asyncio.gather(
        *(store.advance("j1", Phase.SUBMITTING, only_from=frozenset({Phase.HELD})) for _ in range(20))
    )
    assert wins.count(True) == 1
    assert [e for e in await store.events("j1") if e[0] == "submitting"] == [("submitting", "")]


async def test_unknown_fields_are_refused(store: JobStore) -> None:
    await store.create(new_job("j1"))
    with pytest.raises(ValueError, match="unknown job fields"):
        await store.advance("j1", Phase.HELD, state="delivered")
    with pytest.raises(ValueError, match="bad job fields"):
        await store.update("j1", user_id="someone else")
    with pytest.raises(ValueError, match="bad job fields"):
        await store.update("j1")


async def test_an_identical_open_request_is_a_duplicate_until_it_ends(store: JobStore) -> None:
    await store.create(new_job("j1", dedupe="same"))
    with pytest.raises(DuplicateJob) as dup:
        await store.create(new_job("j2", dedupe="same"))
    assert dup.value.existing_id == "j1"
    assert await store.get("j2") is None
    other = await store.create(new_job("j3", user="telegram:5", dedupe="same"))  # another member: a new job
    assert other.phase is Phase.RECEIVED
    found = await store.open_duplicate(ALICE, "same")
    assert found is not None and found.id == "j1"
    await store.advance("j1", Phase.FAILED)
    assert await store.open_duplicate(ALICE, "same") is None
    again = await store.create(new_job("j4", dedupe="same"))
    assert again.phase is Phase.RECEIVED


async def test_concurrent_identical_requests_make_one_job(store: JobStore) -> None:
    results = await asyncio.gather(
        *(store.create(new_job(f"j{n}", dedupe="same")) for n in range(10)), return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, DuplicateJob) and r.existing_id == made[0].id for r in results if r not in made)


async def test_unfinished_is_what_a_restart_must_finish(store: JobStore) -> None:
    for n, phase in enumerate([Phase.RECEIVED, Phase.PROCESSING, Phase.DELIVERING, Phase.DELIVERED]):
        await store.create(new_job(f"open{n}"))
        await store.advance(f"open{n}", phase)
    await store.create(new_job("failed-untold"))
    await store.advance("failed-untold", Phase.FAILED, error="no")
    await store.create(new_job("expired-told"))
    await store.advance("expired-told", Phase.EXPIRED)
    await store.update("expired-told", notified_at=T0 + 5)
    assert [j.id for j in await store.unfinished()] == ["open0", "open1", "open2", "failed-untold"]


async def test_begin_submit_counts_spend_against_the_cap_atomically(store: JobStore) -> None:
    for n in range(10):
        await store.create(new_job(f"j{n}"))
        await store.advance(f"j{n}", Phase.HELD)
    claims = await asyncio.gather(
        *(store.begin_submit(f"j{n}", usd_micros=200_000, cap_usd_micros=700_000, since=0) for n in range(10))
    )
    assert claims.count(Claim.CLAIMED) == 3 and claims.count(Claim.OVER_BUDGET) == 7
    assert await store.spent_usd_micros_since(0) == 600_000
    claimed = [f"j{n}" for n, c in enumerate(claims) if c is Claim.CLAIMED]
    for job_id in claimed:
        job = await store.get(job_id)
        assert job is not None and job.phase is Phase.SUBMITTING and job.provider_charged
        assert await store.begin_submit(job_id, usd_micros=1, cap_usd_micros=0, since=0) is Claim.MOVED
    # A submit the provider refused is not billed: its amount is free again.
    await store.advance(claimed[0], Phase.FAILED, provider_charged=False)
    assert await store.spent_usd_micros_since(0) == 400_000
    left = next(f"j{n}" for n, c in enumerate(claims) if c is Claim.OVER_BUDGET)
    assert await store.begin_submit(left, usd_micros=200_000, cap_usd_micros=700_000, since=0) is Claim.CLAIMED
    # Spend before the start of the day does not count; no cap means no limit.
    assert await store.spent_usd_micros_since(T0 + 10_000) == 0
    other = next(f"j{n}" for n, c in enumerate(claims) if c is Claim.OVER_BUDGET and f"j{n}" != left)
    assert await store.begin_submit(other, usd_micros=10**9, cap_usd_micros=0, since=0) is Claim.CLAIMED


async def test_run_samples_keep_the_newest(store: JobStore) -> None:
    for n in range(8):
        await store.record_run("fal", "i2v/512P/5", float(n), 30.0 + n, keep=5)
    await store.record_run("fal", "t2v/any/5", None, 9.0, keep=5)
    assert await store.run_samples("fal", "i2v/512P/5") == [(float(n), 30.0 + n) for n in range(3, 8)]
    assert await store.run_samples("fal", "t2v/any/5") == [(None, 9.0)]
