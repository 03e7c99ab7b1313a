"""Jobs: every state is written here before the service acts on it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from storage.db import Database


class Phase(StrEnum):
    """Where a job is in its life. The last four are final."""

    RECEIVED = "received"
    HELD = "held"
    SUBMITTING = "submitting"  # written before the submit call: if we die here, we never resend it
    SUBMITTED = "submitted"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"  # the provider has the clip; we are fetching it
    DELIVERING = "delivering"  # the clip is on disk; we are sending it to the member
    DELIVERED = "delivered"
    FAILED = "failed"  # credits released
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({Phase.DELIVERED, Phase.FAILED, Phase.CANCELLED, Phase.EXPIRED})
AT_PROVIDER = frozenset({Phase.SUBMITTED, Phase.QUEUED, Phase.PROCESSING})


@dataclass(frozen=True)
class Job:
    id: str
    user_id: str
    community_id: str | None
    kind: str
    phase: Phase
    prompt: str
    options: Mapping[str, Any]
    cost: int
    reply: Mapping[str, Any]
    created_at: float
    updated_at: float
    deadline_at: float
    dedupe_key: str | None = None
    image_path: str | None = None
    image_mime: str | None = None
    image_url: str | None = None
    provider: str | None = None
    handle: str | None = None
    usd_micros: int = 0
    provider_charged: bool = False
    webhook_token: str | None = None
    queue_position: int | None = None
    result_url: str | None = None
    video_path: str | None = None
    error: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    notified_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewJob:
    id: str
    user_id: str
    community_id: str | None
    kind: str
    prompt: str
    options: Mapping[str, Any]
    cost: int
    reply: Mapping[str, Any]
    deadline_at: float
    dedupe_key: str | None
    image_path: str | None
    image_mime: str | None
    image_url: str | None
    webhook_token: str | None


class Claim(StrEnum):
    """What `begin_submit` did."""

    CLAIMED = "claimed"  # now SUBMITTING, its cost counted against today's budget
    OVER_BUDGET = "over budget"  # left HELD: submitting it would pass the operator's cap
    MOVED = "moved"  # no longer HELD (another step got there first): nothing to do


# Provider spend: every job a provider took, or may have taken, and may bill.
_SPENT_SQL = "SELECT COALESCE(SUM(usd_micros), 0) FROM jobs WHERE submitted_at >= ? AND provider_charged = 1"


class DuplicateJob(Exception):
    """An identical request from the same member is still in flight."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(existing_id)
        self.existing_id = existing_id


_COLUMNS = {
    "provider",
    "handle",
    "usd_micros",
    "provider_charged",
    "queue_position",
    "result_url",
    "video_path",
    "error",
    "submitted_at",
    "started_at",
    "finished_at",
    "notified_at",
    "image_url",
}


class JobStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    async def create(self, new: NewJob) -> Job:
        """Record a received job; DuplicateJob if the same member has the same request open."""
        now = self._clock()
        values = (
            new.id,
            new.user_id,
            new.community_id,
            new.kind,
            new.prompt,
            json.dumps(dict(new.options)),
            new.cost,
            json.dumps(dict(new.reply)),
            new.dedupe_key,
            new.image_path,
            new.image_mime,
            new.image_url,
            new.webhook_token,
            new.deadline_at,
            now,
            now,
        )

        def insert(conn: sqlite3.Connection) -> sqlite3.Row:
            rows: list[sqlite3.Row] = conn.execute(
                "INSERT INTO jobs (id, user_id, community_id, kind, state, prompt, options, cost, reply,"
                " dedupe_key, image_path, image_mime, image_url, webhook_token, deadline_at, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                values,
            ).fetchall()
            _event(conn, new.id, Phase.RECEIVED, "", now)
            return rows[0]

        try:
            row = await self.db.run(insert)
        except sqlite3.IntegrityError as exc:
            if new.dedupe_key is not None:
                existing = await self.open_duplicate(new.user_id, new.dedupe_key)
                if existing is not None:
                    raise DuplicateJob(existing.id) from exc
            raise
        return _job(row)

    async def open_duplicate(self, user_id: str, dedupe_key: str) -> Job | None:
        row = await self.db.fetchone(
            "SELECT * FROM jobs WHERE user_id = ? AND dedupe_key = ?"
            " AND state NOT IN ('delivered', 'failed', 'cancelled', 'expired')",
            (user_id, dedupe_key),
        )
        return _job(row) if row else None

    async def advance(
        self, job_id: str, phase: Phase, *, only_from: frozenset[Phase] | None = None, detail: str = "", **fields: Any
    ) -> bool:
        """Move a job to `phase` (and set fields) unless it is final or not in `only_from`. True if moved."""
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        allowed = only_from if only_from is not None else frozenset(Phase) - FINAL
        now = self._clock()
        sets = ", ".join(f"{name} = ?" for name in fields)
        values = [_db_value(v) for v in fields.values()]
        marks = ", ".join("?" for _ in allowed)
        sql = (
            f"UPDATE jobs SET state = ?, updated_at = ?{', ' + sets if sets else ''}"  # noqa: S608 - column names are whitelisted
            f" WHERE id = ? AND state IN ({marks})"
        )
        params = (phase.value, now, *values, job_id, *(p.value for p in allowed))

        def move(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql, params).rowcount != 1:
                return False
            _event(conn, job_id, phase, detail, now)
            return True

        return await self.db.run(move)

    async def begin_submit(self, job_id: str, *, usd_micros: int, cap_usd_micros: int, since: float) -> Claim:
        """HELD -> SUBMITTING, counting `usd_micros` as spent at once, unless that passes the cap (0 = none).

        The check and the write are one atomic step, so concurrent submits can never together pass the
        operator's daily cap; a submit that turns out not to be billed gives the amount back (`provider_charged`).
        """
        now = self._clock()

        def claim(conn: sqlite3.Connection) -> Claim:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != Phase.HELD.value:
                return Claim.MOVED
            if cap_usd_micros > 0:
                spent = conn.execute(_SPENT_SQL, (since,)).fetchone()[0]
                if spent + usd_micros > cap_usd_micros:
                    return Claim.OVER_BUDGET
            conn.execute(
                "UPDATE jobs SET state = ?, usd_micros = ?, provider_charged = 1, submitted_at = ?, updated_at = ?"
                " WHERE id = ?",
                (Phase.SUBMITTING.value, usd_micros, now, now, job_id),
            )
            _event(conn, job_id, Phase.SUBMITTING, "", now)
            return Claim.CLAIMED

        return await self.db.run(claim)

    async def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without changing the phase (queue position, notification time, ...)."""
        unknown = set(fields) - _COLUMNS
        if unknown or not fields:
            raise ValueError(f"bad job fields {sorted(unknown)}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ?"  # noqa: S608 - column names are whitelisted
        params = (*(_db_value(v) for v in fields.values()), self._clock(), job_id)
        await self.db.run(lambda conn: conn.execute(sql, params))

    async def get(self, job_id: str) -> Job | None:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def by_webhook_token(self, token: str) -> Job | None:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE webhook_token = ?", (token,))
        return _job(row) if row else None

    async def unfinished(self) -> list[Job]:
        """Jobs not yet final, and final ones whose member has not been told: what a restart must finish."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE state NOT IN ('delivered', 'failed', 'cancelled', 'expired')"
            " OR (notified_at IS NULL AND state IN ('failed', 'cancelled', 'expired'))"
            " ORDER BY created_at"
        )
        return [_job(r) for r in rows]

    async def recent(self, user_id: str, limit: int = 10) -> list[Job]:
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC LIMIT ?", (user_id, limit)
        )
        return [_job(r) for r in rows]

    async def spent_usd_micros_since(self, since: float) -> int:
        """Provider spend since `since`, counting every job a provider took and may bill."""
        row = await self.db.fetchone(_SPENT_SQL, (since,))
        return int(row[0]) if row else 0

    async def phase_counts(self) -> dict[str, int]:
        """How many jobs are in each phase (for /metrics)."""
        rows = await self.db.fetchall("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    async def events(self, job_id: str) -> list[tuple[str, str]]:
        rows = await self.db.fetchall("SELECT state, detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
        return [(r["state"], r["detail"]) for r in rows]

    async def record_run(
        self, provider: str, variant: str, queue_seconds: float | None, run_seconds: float, keep: int = 200
    ) -> None:
        """Remember how long a job took, keeping the newest `keep` samples per provider and variant."""
        now = self._clock()

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO run_samples (provider, variant, queue_seconds, run_seconds, recorded_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (provider, variant, queue_seconds, run_seconds, now),
            )
            conn.execute(
                "DELETE FROM run_samples WHERE provider = ? AND variant = ? AND id NOT IN"
                " (SELECT id FROM run_samples WHERE provider = ? AND variant = ? ORDER BY id DESC LIMIT ?)",
                (provider, variant, provider, variant, keep),
            )

        await self.db.run(record)

    async def run_samples(self, provider: str, variant: str) -> list[tuple[float | None, float]]:
        rows = await self.db.fetchall(
            "SELECT queue_seconds, run_seconds FROM run_samples WHERE provider = ? AND variant = ? ORDER BY id",
            (provider, variant),
        )
        return [(r["queue_seconds"], r["run_seconds"]) for r in rows]


def _event(conn: sqlite3.Connection, job_id: str, phase: Phase, detail: str, now: float) -> None:
    conn.execute(
        "INSERT INTO job_events (job_id, state, detail, at) VALUES (?, ?, ?, ?)", (job_id, phase.value, detail, now)
    )


def _db_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        user_id=row["user_id"],
        community_id=row["community_id"],
        kind=row["kind"],
        phase=Phase(row["state"]),
        prompt=row["prompt"],
        options=json.loads(row["options"]),
        cost=row["cost"],
        reply=json.loads(row["reply"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deadline_at=row["deadline_at"] or row["created_at"],
        dedupe_key=row["dedupe_key"],
        image_path=row["image_path"],
        image_mime=row["image_mime"],
        image_url=row["image_url"],
        provider=row["provider"],
        handle=row["handle"],
        usd_micros=row["usd_micros"],
        provider_charged=bool(row["provider_charged"]),
        webhook_token=row["webhook_token"],
        queue_position=row["queue_position"],
        result_url=row["result_url"],
        video_path=row["video_path"],
        error=row["error"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        notified_at=row["notified_at"],
    )
