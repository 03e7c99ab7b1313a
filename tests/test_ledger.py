"""The credit ledger on a real SQLite file: concurrency, idempotency, settle-once, no negative balance, history."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.db import Database
from storage.ledger import EntryKind, InsufficientCredits, Ledger

ALICE = "test:alice"


class Clock:
    """Wall time that moves one second per reading, so entries get distinct, ordered timestamps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> float:
        return self.start + next(self._ticks)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path}/ledger.db")
    try:
        yield database
    finally:
        await database.close()


async def funded(db: Database, amount: int, user: str = ALICE, **kw: object) -> Ledger:
    ledger = Ledger(db, starting_credits=0, **kw)  # type: ignore[arg-type]
    await ledger.credit(user, amount, kind=EntryKind.GRANT, actor="operator", reason="test", idem_key=f"fund:{user}")
    return ledger


async def test_200_concurrent_holds_against_7_jobs_worth(db: Database) -> None:
    ledger = await funded(db, 7 * 4)
    lowest = 7 * 4
    stop = asyncio.Event()

    async def watch() -> None:
        # A member refreshing /balance during the rush never sees a negative number.
        nonlocal lowest
        while not stop.is_set():
            lowest = min(lowest, await ledger.balance(ALICE))
            await asyncio.sleep(0)

    async def attempt(n: int) -> str | None:
        try:
            await ledger.hold(ALICE, f"job-{n}", 4, actor=ALICE)
        except InsufficientCredits as exc:
            assert exc.needed == 4 and 0 <= exc.balance < 4
            return None
        return f"job-{n}"

    watcher = asyncio.create_task(watch())
    outcomes = await asyncio.gather(*(attempt(n) for n in range(200)))
    stop.set()
    await watcher
    won = [job for job in outcomes if job is not None]
    assert len(won) == 7
    assert lowest >= 0
    assert await ledger.balance(ALICE) == 0
    assert len(await ledger.open_holds()) == 7
    assert all(await asyncio.gather(*(ledger.capture(job) for job in won)))
    assert await ledger.balance(ALICE) == 0
    assert await ledger.entries_sum(ALICE) == 0
    assert await ledger.open_holds() == []
    kinds = [e.kind for e in await ledger.history(ALICE, limit=100)]
    assert kinds.count(EntryKind.HOLD) == 7 and kinds.count(EntryKind.CAPTURE) == 7  # refused holds left no entry


async def test_the_same_grant_twice_applies_once(db: Database) -> None:
    ledger = Ledger(db, starting_credits=0)
    first = await ledger.credit(
        ALICE, 50, kind=EntryKind.PURCHASE, actor="stripe", reason="pack of 50", idem_key="pay:ch_1"
    )
    again = await ledger.credit(
        ALICE, 50, kind=EntryKind.PURCHASE, actor="stripe", reason="pack of 50", idem_key="pay:ch_1"
    )
    assert (first, again) == (True, False)
    assert await ledger.balance(ALICE) == 50
    assert [e.idem_key for e in await ledger.history(ALICE)] == ["pay:ch_1"]


async def test_concurrent_duplicates_of_one_grant_apply_once(db: Database) -> None:
    ledger = Ledger(db, starting_credits=0)
    applied = await asyncio.gather(
        *(
            ledger.credit(ALICE, 5, kind=EntryKind.ALLOWANCE, actor="system", reason="daily", idem_key="day:2026-01-01")
            for _ in range(30)
        )
    )
    assert applied.count(True) == 1
    assert await ledger.balance(ALICE) == 5


async def test_holding_twice_for_one_job_holds_once(db: Database) -> None:
    ledger = await funded(db, 20)
    assert await ledger.hold(ALICE, "job-1", 4, actor=ALICE) is True
    assert await ledger.hold(ALICE, "job-1", 4, actor=ALICE) is False
    assert await ledger.balance(ALICE) == 16
    hold = await ledger.get_hold("job-1")
    assert hold is not None and (hold.amount, hold.state) == (4, "held")


async def test_capture_after_release_is_refused(db: Database) -> None:
    ledger = await funded(db, 10)
    await ledger.hold(ALICE, "job-1", 4, actor=ALICE)
    assert await ledger.release("job-1") is True
    assert await ledger.capture("job-1") is False
    assert await ledger.release("job-1") is False
    assert await ledger.balance(ALICE) == 10
    hold = await ledger.get_hold("job-1")
    assert hold is not None and hold.state == "released" and hold.settled_at is not None


async def test_release_after_capture_is_refused(db: Database) -> None:
    ledger = await funded(db, 10)
    await ledger.hold(ALICE, "job-1", 4, actor=ALICE)
    assert await ledger.capture("job-1") is True
    assert await ledger.release("job-1") is False
    assert await ledger.capture("job-1") is False
    assert await ledger.balance(ALICE) == 6
    hold = await ledger.get_hold("job-1")
    assert hold is not None and hold.state == "captured"


async def test_settling_a_job_that_never_held_does_nothing(db: Database) -> None:
    ledger = await funded(db, 10)
    assert await ledger.capture("nope") is False
    assert await ledger.release("nope") is False
    assert await ledger.balance(ALICE) == 10 and await ledger.entries_sum(ALICE) == 10


async def test_concurrent_capture_and_release_exactly_one_wins(db: Database) -> None:
    ledger = await funded(db, 40 * 4)
    jobs = [f"job-{n}" for n in range(40)]
    for job in jobs:
        await ledger.hold(ALICE, job, 4, actor=ALICE)
    # Capture and release race for every job, in alternating order, each twice over.

    async def race(n: int, job: str) -> list[bool]:
        ops = [ledger.capture(job), ledger.release(job, reason="timeout"), ledger.capture(job), ledger.release(job)]
        if n % 2:
            return list(reversed(await asyncio.gather(*reversed(ops))))
        return list(await asyncio.gather(*ops))

    results = await asyncio.gather(*(race(n, job) for n, job in enumerate(jobs)))
    captured = 0
    for job, (c1, r1, c2, r2) in zip(jobs, results, strict=True):
        assert [c1, r1, c2, r2].count(True) == 1, job
        hold = await ledger.get_hold(job)
        assert hold is not None
        assert hold.state == ("captured" if c1 or c2 else "released")
        captured += hold.state == "captured"
    assert 0 < captured < 40  # both kinds of winner happened
    assert await ledger.balance(ALICE) == 160 - 4 * captured
    assert await ledger.entries_sum(ALICE) == await ledger.balance(ALICE)
    assert await ledger.open_holds() == []


async def test_an_adjustment_cannot_take_a_balance_below_zero(db: Database) -> None:
    ledger = await funded(db, 10)
    await ledger.hold(ALICE, "job-1", 4, actor=ALICE)  # held credits are not spendable
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.credit(ALICE, -7, kind=EntryKind.ADJUSTMENT, actor="mod", reason="abuse", idem_key="adj:1")
    assert (refused.value.balance, refused.value.needed) == (6, 7)
    assert await ledger.balance(ALICE) == 6
    assert "adj:1" not in [e.idem_key for e in await ledger.history(ALICE)]
    assert await ledger.credit(ALICE, -6, kind=EntryKind.ADJUSTMENT, actor="mod", reason="abuse", idem_key="adj:2")
    assert await ledger.balance(ALICE) == 0
    assert await ledger.entries_sum(ALICE) == 0


async def test_only_adjustments_may_be_negative(db: Database) -> None:
    ledger = Ledger(db, starting_credits=0)
    with pytest.raises(ValueError, match="only an adjustment"):
        await ledger.credit(ALICE, -1, kind=EntryKind.GRANT, actor="op", reason="x", idem_key="g")
    with pytest.raises(ValueError, match="not a crediting entry"):
        await ledger.credit(ALICE, 1, kind=EntryKind.CAPTURE, actor="op", reason="x", idem_key="c")
    with pytest.raises(ValueError, match="cannot be negative"):
        await ledger.hold(ALICE, "job-1", -4, actor=ALICE)
    assert await ledger.balance(ALICE) == 0


async def test_history_is_newest_first_with_every_field(db: Database) -> None:
    clock = Clock()
    ledger = Ledger(db, starting_credits=20, clock=clock)
    await ledger.ensure_user(ALICE)
    await ledger.credit(ALICE, 10, kind=EntryKind.PURCHASE, actor="stripe", reason="10 pack", idem_key="pay:1")
    await ledger.hold(ALICE, "job-a", 4, actor=ALICE)
    await ledger.capture("job-a", actor="lifecycle")
    await ledger.hold(ALICE, "job-b", 12, actor=ALICE)
    await ledger.release("job-b", reason="provider failed")
    await ledger.credit(ALICE, -2, kind=EntryKind.ADJUSTMENT, actor="mod:bob", reason="spam", idem_key="adj:1")
    rows = [(e.kind, e.amount, e.actor, e.reason, e.job_id, e.user_id) for e in await ledger.history(ALICE, limit=50)]
    assert rows == [
        (EntryKind.ADJUSTMENT, -2, "mod:bob", "spam", None, ALICE),
        (EntryKind.RELEASE, 12, "system", "provider failed", "job-b", ALICE),
        (EntryKind.HOLD, -12, ALICE, "job accepted", "job-b", ALICE),
        (EntryKind.CAPTURE, 0, "lifecycle", "clip delivered", "job-a", ALICE),
        (EntryKind.HOLD, -4, ALICE, "job accepted", "job-a", ALICE),
        (EntryKind.PURCHASE, 10, "stripe", "10 pack", None, ALICE),
        (EntryKind.GRANT, 20, "system", "welcome credits", None, ALICE),
    ]
    history = await ledger.history(ALICE, limit=50)
    stamps = [e.created_at for e in history]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == len(stamps)
    assert all(stamp >= clock.start for stamp in stamps)
    assert len({e.idem_key for e in history}) == len(history)
    assert [e.kind for e in await ledger.history(ALICE, limit=2)] == [EntryKind.ADJUSTMENT, EntryKind.RELEASE]
    assert await ledger.history("test:nobody") == []
    assert await ledger.balance(ALICE) == 20 + 10 - 4 - 2 == await ledger.entries_sum(ALICE)


async def test_welcome_grant_once_even_when_first_requests_race(db: Database) -> None:
    # Two front-ends (two Ledger objects, no shared cache) see the same new member at the same moment.
    ledgers = [Ledger(db, starting_credits=20), Ledger(db, starting_credits=20)]
    await asyncio.gather(*(ledgers[n % 2].ensure_user(ALICE) for n in range(40)))
    assert await ledgers[0].balance(ALICE) == 20
    grants = [e for e in await ledgers[1].history(ALICE) if e.kind is EntryKind.GRANT]
    assert len(grants) == 1 and grants[0].reason == "welcome credits"
    # A fresh process (empty cache) meeting the member again grants nothing more.
    await Ledger(db, starting_credits=20).ensure_user(ALICE)
    assert await ledgers[0].balance(ALICE) == 20


async def test_a_failing_write_does_not_undo_writes_committed_with_it(db: Database) -> None:
    # Concurrent writes share one commit; a refused hold must roll back only itself.
    ledger = await funded(db, 4)
    bob = "test:bob"
    await ledger.credit(bob, 4, kind=EntryKind.GRANT, actor="op", reason="t", idem_key="fund:bob")
    results = await asyncio.gather(
        ledger.hold(ALICE, "a1", 4, actor=ALICE),
        ledger.hold(ALICE, "a2", 4, actor=ALICE),
        ledger.hold(bob, "b1", 4, actor=bob),
        return_exceptions=True,
    )
    assert results[2] is True
    assert sorted(type(r).__name__ for r in results[:2]) == ["InsufficientCredits", "bool"]
    assert (await ledger.balance(ALICE), await ledger.balance(bob)) == (0, 0)
    held_for_alice = {job for job, r in zip(["a1", "a2"], results[:2], strict=True) if r is True}
    assert {h.job_id for h in await ledger.open_holds()} == {"b1", *held_for_alice}
