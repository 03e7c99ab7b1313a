"""The credit ledger: every balance change is an entry; holds are captured or released, exactly once.

Integrity lives in the schema: a trigger applies each entry to the balance, a CHECK keeps it from going
negative, and triggers open and close holds. So every operation here is a single INSERT that lands whole
or not at all, which keeps the ledger right under any concurrency and any crash.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from storage.db import Database


class EntryKind(StrEnum):
    GRANT = "grant"
    PURCHASE = "purchase"
    ALLOWANCE = "allowance"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    ADJUSTMENT = "adjustment"


CREDITING = (EntryKind.GRANT, EntryKind.PURCHASE, EntryKind.ALLOWANCE, EntryKind.ADJUSTMENT)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    user_id: str
    kind: EntryKind
    amount: int
    idem_key: str
    job_id: str | None
    actor: str
    reason: str
    created_at: float


@dataclass(frozen=True)
class Hold:
    job_id: str
    user_id: str
    amount: int
    state: str
    created_at: float
    settled_at: float | None


class InsufficientCredits(Exception):
    def __init__(self, balance: int, needed: int) -> None:
        super().__init__(f"balance {balance} is less than {needed}")
        self.balance = balance
        self.needed = needed


class Ledger:
    """Balances, holds and history for members identified as "<platform>:<id>"."""

    def __init__(self, db: Database, *, starting_credits: int, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.starting_credits = starting_credits
        self._clock = clock
        self._known: set[str] = set()

    async def ensure_user(self, user_id: str) -> None:
        """Create the member on first sight, with the starting balance as a welcome grant."""
        if user_id in self._known:
            return
        now, welcome = self._clock(), self.starting_credits

        def create(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "INSERT INTO users (id, balance, created_at) VALUES (?, 0, ?) ON CONFLICT (id) DO NOTHING",
                (user_id, now),
            )
            if cur.rowcount == 1 and welcome > 0:
                conn.execute(
                    "INSERT INTO ledger (user_id, kind, amount, idem_key, actor, reason, created_at)"
                    " VALUES (?, 'grant', ?, ?, 'system', 'welcome credits', ?)",
                    (user_id, welcome, f"welcome:{user_id}", now),
                )

        await self.db.run(create)
        self._known.add(user_id)

    async def balance(self, user_id: str) -> int:
        row = await self.db.fetchone("SELECT balance FROM users WHERE id = ?", (user_id,))
        return int(row["balance"]) if row else 0

    async def credit(
        self, user_id: str, amount: int, *, kind: EntryKind, actor: str, reason: str, idem_key: str
    ) -> bool:
        """Add (or, for an adjustment, remove) credits. False when this idem_key was already applied."""
        if kind not in CREDITING:
            raise ValueError(f"{kind} is not a crediting entry")
        if amount < 0 and kind is not EntryKind.ADJUSTMENT:
            raise ValueError("only an adjustment may be negative")
        await self.ensure_user(user_id)
        try:
            return await self._insert(user_id, kind, amount, idem_key, None, actor, reason)
        except sqlite3.IntegrityError as exc:
            raise InsufficientCredits(await self.balance(user_id), -amount) from exc

    async def hold(self, user_id: str, job_id: str, amount: int, *, actor: str) -> bool:
        """Reserve `amount` for a job. False if this job already holds; InsufficientCredits if short."""
        if amount < 0:
            raise ValueError("a hold cannot be negative")
        try:
            return await self._insert(user_id, EntryKind.HOLD, -amount, f"hold:{job_id}", job_id, actor, "job accepted")
        except sqlite3.IntegrityError as exc:
            raise InsufficientCredits(await self.balance(user_id), amount) from exc

    async def capture(self, job_id: str, *, actor: str = "system") -> bool:
        """Keep the held credits: the clip was delivered. False if the hold was already settled."""
        return await self._settle(job_id, EntryKind.CAPTURE, actor, "clip delivered")

    async def release(self, job_id: str, *, actor: str = "system", reason: str = "job did not complete") -> bool:
        """Return the held credits. False if the hold was already settled (or never existed)."""
        return await self._settle(job_id, EntryKind.RELEASE, actor, reason)

    async def _settle(self, job_id: str, kind: EntryKind, actor: str, reason: str) -> bool:
        # One statement reads the open hold and writes the entry, so no read can go stale in between; the
        # idem key and the guard trigger make a second settlement (capture after release, or vice versa) a no-op.
        now = self._clock()

        def settle(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
                " SELECT user_id, ?, CASE WHEN ? = 'release' THEN amount ELSE 0 END, ?, job_id, ?, ?, ?"
                " FROM holds WHERE job_id = ? AND state = 'held'"
                " ON CONFLICT (idem_key) DO NOTHING",
                (kind.value, kind.value, f"settle:{job_id}", actor, reason, now, job_id),
            )
            return cur.rowcount == 1

        return await self.db.run(settle)

    async def _insert(
        self, user_id: str, kind: EntryKind, amount: int, key: str, job_id: str | None, actor: str, reason: str
    ) -> bool:
        row = (user_id, kind.value, amount, key, job_id, actor, reason, self._clock())

        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idem_key) DO NOTHING",
                row,
            )
            return cur.rowcount == 1

        return await self.db.run(insert)

    async def get_hold(self, job_id: str) -> Hold | None:
        row = await self.db.fetchone("SELECT * FROM holds WHERE job_id = ?", (job_id,))
        return _hold(row) if row else None

    async def held_total(self) -> int:
        """Credits currently held for jobs in flight."""
        row = await self.db.fetchone("SELECT COALESCE(SUM(amount), 0) AS s FROM holds WHERE state = 'held'")
        return int(row["s"]) if row else 0

    async def open_holds(self) -> list[Hold]:
        return [_hold(r) for r in await self.db.fetchall("SELECT * FROM holds WHERE state = 'held'")]

    async def history(self, user_id: str, limit: int = 20) -> list[LedgerEntry]:
        rows = await self.db.fetchall(
            "SELECT * FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, max(1, limit))
        )
        return [
            LedgerEntry(
                id=r["id"],
                user_id=r["user_id"],
                kind=EntryKind(r["kind"]),
                amount=r["amount"],
                idem_key=r["idem_key"],
                job_id=r["job_id"],
                actor=r["actor"],
                reason=r["reason"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    async def entries_sum(self, user_id: str) -> int:
        row = await self.db.fetchone("SELECT COALESCE(SUM(amount), 0) AS s FROM ledger WHERE user_id = ?", (user_id,))
        return int(row["s"]) if row else 0


def _hold(row: sqlite3.Row) -> Hold:
    return Hold(
        job_id=row["job_id"],
        user_id=row["user_id"],
        amount=row["amount"],
        state=row["state"],
        created_at=row["created_at"],
        settled_at=row["settled_at"],
    )
