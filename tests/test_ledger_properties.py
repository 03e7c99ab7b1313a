"""Property-based: any sequence of ledger operations keeps balance == sum(entries) >= 0 and settles holds once.

A hypothesis state machine drives the real Ledger on a real SQLite file (one event loop per example) and
checks it against a plain-Python model of what each operation must do.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from storage.db import Database
from storage.ledger import EntryKind, InsufficientCredits, Ledger

T = TypeVar("T")
USERS = st.sampled_from(["test:u0", "test:u1", "test:u2"])
JOBS = st.sampled_from([f"job-{n}" for n in range(6)])
KEYS = st.sampled_from([f"key-{n}" for n in range(5)])  # few keys, so duplicates are common


@dataclass
class ModelHold:
    user: str
    amount: int
    state: str  # held | captured | released


class LedgerMachine(RuleBasedStateMachine):
    """The real ledger against a model: balances per user, used idem keys, holds per job."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-prop-"))
        self.db: Database | None = None
        self.balances: dict[str, int] = {}
        self.keys: set[str] = set()
        self.holds: dict[str, ModelHold] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def ledger(self) -> Ledger:
        assert self.db is not None
        return Ledger(self.db, starting_credits=0)

    @initialize()
    def open_db(self) -> None:
        self.db = self.run(Database.open(f"sqlite:///{self.folder / 'ledger.db'}"))

    # -- operations -----------------------------------------------------------------------------

    @rule(user=USERS, amount=st.integers(0, 20), key=KEYS, kind=st.sampled_from([EntryKind.GRANT, EntryKind.PURCHASE]))
    def credit(self, user: str, amount: int, key: str, kind: EntryKind) -> None:
        applied = self.run(self.ledger.credit(user, amount, kind=kind, actor="op", reason="prop", idem_key=key))
        self.balances.setdefault(user, 0)
        assert applied == (key not in self.keys)
        if applied:
            self.keys.add(key)
            self.balances[user] += amount

    @rule(user=USERS, amount=st.integers(-25, 10), key=KEYS)
    def adjust(self, user: str, amount: int, key: str) -> None:
        self.balances.setdefault(user, 0)
        try:
            applied = self.run(
                self.ledger.credit(user, amount, kind=EntryKind.ADJUSTMENT, actor="mod", reason="prop", idem_key=key)
            )
        except InsufficientCredits:
            assert key not in self.keys and self.balances[user] + amount < 0
            return
        assert applied == (key not in self.keys)
        if applied:
            assert self.balances[user] + amount >= 0
            self.keys.add(key)
            self.balances[user] += amount

    @rule(user=USERS, job=JOBS, amount=st.integers(0, 12))
    def hold(self, user: str, job: str, amount: int) -> None:
        self.run(self.ledger.ensure_user(user))
        self.balances.setdefault(user, 0)
        try:
            took = self.run(self.ledger.hold(user, job, amount, actor=user))
        except InsufficientCredits:
            assert job not in self.holds and self.balances[user] < amount
            return
        assert took == (job not in self.holds)
        if took:
            assert self.balances[user] >= amount
            self.holds[job] = ModelHold(user, amount, "held")
            self.balances[user] -= amount

    @rule(job=JOBS)
    def capture(self, job: str) -> None:
        done = self.run(self.ledger.capture(job))
        hold = self.holds.get(job)
        assert done == (hold is not None and hold.state == "held")
        if done and hold is not None:
            hold.state = "captured"

    @rule(job=JOBS)
    def release(self, job: str) -> None:
        done = self.run(self.ledger.release(job))
        hold = self.holds.get(job)
        assert done == (hold is not None and hold.state == "held")
        if done and hold is not None:
            hold.state = "released"
            self.balances[hold.user] += hold.amount

    @rule(job=JOBS)
    def capture_and_release_race(self, job: str) -> None:
        async def race() -> list[bool]:
            return list(await asyncio.gather(self.ledger.release(job), self.ledger.capture(job)))

        released, captured = self.run(race())
        hold = self.holds.get(job)
        was_open = hold is not None and hold.state == "held"
        assert [released, captured].count(True) == (1 if was_open else 0)
        if was_open and hold is not None:
            hold.state = "released" if released else "captured"
            self.balances[hold.user] += hold.amount if released else 0

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        if self.db is None:
            return
        for user, expected in self.balances.items():
            balance = self.run(self.ledger.balance(user))
            assert balance == expected == self.run(self.ledger.entries_sum(user))
            assert balance >= 0

    @invariant()
    def holds_match_their_entries(self) -> None:
        if self.db is None:
            return
        db = self.db
        rows = self.run(db.fetchall("SELECT job_id, user_id, amount, state FROM holds"))
        assert {r["job_id"]: (r["user_id"], r["amount"], r["state"]) for r in rows} == {
            job: (h.user, h.amount, h.state) for job, h in self.holds.items()
        }
        for job, hold in self.holds.items():
            entries = self.run(db.fetchall("SELECT kind, amount FROM ledger WHERE job_id = ? ORDER BY id", (job,)))
            kinds = [e["kind"] for e in entries]
            expected = {"held": ["hold"], "captured": ["hold", "capture"], "released": ["hold", "release"]}
            assert kinds == expected[hold.state]
            assert sum(e["amount"] for e in entries) == (0 if hold.state == "released" else -hold.amount)

    def teardown(self) -> None:
        try:
            if self.db is not None:
                self.settle_everything()
        finally:
            if self.db is not None:
                self.run(self.db.close())
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    def settle_everything(self) -> None:
        """Every hold ends settled: close the open ones, alternating capture and release, and recheck the books."""
        for n, job in enumerate(sorted(j for j, h in self.holds.items() if h.state == "held")):
            assert self.run(self.ledger.capture(job) if n % 2 else self.ledger.release(job))
            hold = self.holds[job]
            hold.state = "captured" if n % 2 else "released"
            self.balances[hold.user] += 0 if n % 2 else hold.amount
        assert self.run(self.ledger.open_holds()) == []
        self.books_balance()
        self.holds_match_their_entries()


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerProperties = LedgerMachine.TestCase
