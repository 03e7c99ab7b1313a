"""Schema upgrades keep every row: a database made by the first schema is upgraded and checked field by field."""

from __future__ import annotations

import json
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from storage import db as db_module
from storage.db import MIGRATION_NAME, Database, migrations
from storage.jobs import JobStore, Phase
from storage.ledger import EntryKind, Ledger

ALICE, BOB = "discord:111", "telegram:222"
T0 = 1_750_000_000.0

# Rows exactly as the first schema's code wrote them: a member with a welcome grant and four jobs: one
# delivered (hold + capture), one still at the provider (hold only), one failed (hold + release), and one
# failed whose hold was never released.
V1_ROWS = [
    ("INSERT INTO users (id, balance, created_at) VALUES (?, 0, ?)", (ALICE, T0)),
    ("INSERT INTO users (id, balance, created_at) VALUES (?, 0, ?)", (BOB, T0)),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "grant", 20, f"welcome:{ALICE}", None, "system", "welcome credits", T0),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (BOB, "grant", 5, f"welcome:{BOB}", None, "system", "welcome credits", T0),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "hold", -4, "hold:job-a", "job-a", ALICE, "job accepted", T0 + 1),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "capture", 0, "settle:job-a", "job-a", "system", "clip delivered", T0 + 30),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "hold", -4, "hold:job-b", "job-b", ALICE, "job accepted", T0 + 40),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "hold", -12, "hold:job-c", "job-c", ALICE, "job accepted", T0 + 50),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "release", 12, "settle:job-c", "job-c", "system", "job failed", T0 + 60),
    ),
    (
        "INSERT INTO ledger (user_id, kind, amount, idem_key, job_id, actor, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (ALICE, "hold", -4, "hold:job-d", "job-d", ALICE, "job accepted", T0 + 70),
    ),
]
V1_JOBS = {
    "job-a": ("delivered", "fal", "/data/videos/job-a.mp4", None, T0 + 1, T0 + 30),
    "job-b": ("processing", "fal", None, None, T0 + 40, T0 + 45),
    "job-c": ("failed", "pixazo", None, "The video service could not make this clip.", T0 + 50, T0 + 60),
    # Failed, but the old process died before releasing its hold: after the upgrade a restart must refund it.
    "job-d": ("failed", "fal", None, "The video service could not make this clip.", T0 + 70, T0 + 80),
}


def _write_v1(conn: sqlite3.Connection) -> None:
    for sql, params in V1_ROWS:
        conn.execute(sql, params)
    for job_id, (state, provider, video, error, created, updated) in V1_JOBS.items():
        conn.execute(
            "INSERT INTO jobs (id, user_id, kind, state, prompt, options, cost, provider, handle, reply, error,"
            " video_path, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                ALICE,
                "image-to-video",
                state,
                f"prompt of {job_id}",
                json.dumps({"resolution": "1024P" if job_id == "job-c" else "512P", "duration_s": 5}),
                12 if job_id == "job-c" else 4,
                provider,
                json.dumps({"provider": provider, "request_id": f"req-{job_id}", "extra": {}}),
                json.dumps({"platform": "discord", "channel_id": "42", "message_id": job_id}),
                error,
                video,
                created,
                updated,
            ),
        )


async def _make_v1(url: str) -> None:
    db = await Database.open(url, upto=1)
    try:
        assert await db.version() == 1
        columns = {r["name"] for r in await db.fetchall("PRAGMA table_info(jobs)")}
        assert "usd_micros" not in columns and "holds" not in await _tables(db)
        await db.run(_write_v1)
    finally:
        await db.close()


async def _tables(db: Database) -> set[str]:
    return {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def _snapshot(db: Database) -> dict[str, list[tuple[object, ...]]]:
    return {
        table: [tuple(r) for r in await db.fetchall(f"SELECT * FROM {table} ORDER BY 1")]  # noqa: S608 - fixed names
        for table in ("users", "ledger", "jobs", "holds", "job_events")
    }


async def test_upgrade_from_the_first_schema_keeps_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    await _make_v1(url)
    newest = migrations()[-1][0]

    db = await Database.open(url)
    try:
        assert await db.version() == newest
        ledger, jobs = Ledger(db, starting_credits=20), JobStore(db)
        # Balances as the old code left them, still equal to the sum of entries.
        assert await ledger.balance(ALICE) == 20 - 4 - 4 - 4 == await ledger.entries_sum(ALICE)
        assert await ledger.balance(BOB) == 5 == await ledger.entries_sum(BOB)
        history = await ledger.history(ALICE, limit=50)
        assert [(e.kind, e.amount, e.job_id) for e in reversed(history)] == [
            (EntryKind.GRANT, 20, None),
            (EntryKind.HOLD, -4, "job-a"),
            (EntryKind.CAPTURE, 0, "job-a"),
            (EntryKind.HOLD, -4, "job-b"),
            (EntryKind.HOLD, -12, "job-c"),
            (EntryKind.RELEASE, 12, "job-c"),
            (EntryKind.HOLD, -4, "job-d"),
        ]
        # Holds written as plain entries became rows with the right state and settle time.
        holds = {j: await ledger.get_hold(j) for j in V1_JOBS}
        assert {j: (h.user_id, h.amount, h.state, h.settled_at) for j, h in holds.items() if h} == {
            "job-a": (ALICE, 4, "captured", T0 + 30),
            "job-b": (ALICE, 4, "held", None),
            "job-c": (ALICE, 12, "released", T0 + 60),
            "job-d": (ALICE, 4, "held", None),
        }
        # Jobs read back whole through today's code, with the new columns at their defaults.
        for job_id, (state, provider, video, error, created, updated) in V1_JOBS.items():
            job = await jobs.get(job_id)
            assert job is not None
            assert (job.phase.value, job.provider, job.video_path, job.error) == (state, provider, video, error)
            assert (job.created_at, job.updated_at, job.deadline_at) == (created, updated, created + 1200)
            assert job.reply == {"platform": "discord", "channel_id": "42", "message_id": job_id}
            assert job.handle is not None and json.loads(job.handle)["request_id"] == f"req-{job_id}"
            assert (job.usd_micros, job.provider_charged, job.dedupe_key, job.webhook_token) == (0, False, None, None)
        # A restart finishes the job in flight and refunds the one left held; old failures are not re-announced.
        assert [j.id for j in await jobs.unfinished()] == ["job-b", "job-d"]
        notified = {job.id: job.notified_at for job in await jobs.recent(ALICE, limit=10)}
        assert notified == {"job-a": None, "job-b": None, "job-c": T0 + 60, "job-d": None}
        # The old open holds behave like new ones: each settles once, and settled ones stay settled.
        assert await ledger.release("job-a") is False
        assert await ledger.capture("job-b") is True
        assert await ledger.release("job-b") is False
        assert await ledger.release("job-d") is True
        assert await ledger.balance(ALICE) == 12
        assert await jobs.advance("job-b", Phase.DELIVERED)
        assert await jobs.events("job-b") == [("delivered", "")]
        before = await _snapshot(db)
    finally:
        await db.close()

    # Opening again applies nothing and changes nothing.
    db = await Database.open(url)
    try:
        assert await db.version() == newest
        assert await db.migrate() == newest
        assert await _snapshot(db) == before
    finally:
        await db.close()


async def test_a_fresh_database_gets_the_newest_schema(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/sub/dir/new.db")
    try:
        assert await db.version() == len(migrations())
        assert {"users", "ledger", "jobs", "holds", "job_events", "run_samples"} <= await _tables(db)
    finally:
        await db.close()


def test_migrations_are_numbered_without_gaps() -> None:
    shipped = sorted(
        entry.name for entry in resources.files("storage.migrations").iterdir() if entry.name.endswith(".sql")
    )
    assert shipped, "no migrations shipped"
    assert all(MIGRATION_NAME.match(name) for name in shipped), shipped
    assert [int(name[:4]) for name in shipped] == list(range(1, len(shipped) + 1))
    assert [(v, n) for v, n, _ in migrations()] == [(int(n[:4]), n) for n in shipped]


async def test_a_migration_that_fails_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    await _make_v1(url)
    real = migrations()
    broken = (
        len(real) + 1,
        f"{len(real) + 1:04d}_broken.sql",
        "CREATE TABLE half_done (x); INSERT INTO nowhere VALUES (1);",
    )
    monkeypatch.setattr(db_module, "migrations", lambda: [*real, broken])
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        await Database.open(url)
    monkeypatch.undo()
    db = await Database.open(url)
    try:
        assert await db.version() == len(real)  # the good ones applied, the broken one not at all
        assert "half_done" not in await _tables(db)
        assert await Ledger(db, starting_credits=0).balance(ALICE) == 8
    finally:
        await db.close()


def test_a_gap_in_the_numbering_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Entry:
        def __init__(self, name: str) -> None:
            self.name = name

        def read_text(self, encoding: str) -> str:
            return "SELECT 1;"

    class Folder:
        def iterdir(self) -> list[Entry]:
            return [Entry("0001_initial.sql"), Entry("0003_later.sql"), Entry("README.md")]

    monkeypatch.setattr(db_module.resources, "files", lambda package: Folder())
    with pytest.raises(RuntimeError, match=r"0003_later\.sql is out of sequence"):
        db_module.migrations()
