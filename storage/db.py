"""SQLite: one writer thread that commits concurrent writes together, one reader, numbered migrations.

Every write is a small synchronous function of the connection (`Database.run`). Writes that arrive while
another commit is under way are applied together in the next transaction, each inside its own savepoint
(so one failing write, say a hold refused by the balance CHECK, undoes only itself), and each caller
resumes only after the COMMIT that made its write durable. Under concurrency that is one thread hop and
one commit for a whole batch instead of a few hops and a commit per write, while "written before it is
acted on" still holds for every single write.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
MAX_BATCH = 256  # writes per commit: bounds how long one caller waits behind others

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]


class DatabaseUrlError(ValueError):
    pass


def sqlite_path(url: str) -> Path:
    """The file named by a sqlite:/// URL: three slashes relative, four absolute."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise DatabaseUrlError(
            "unsupported DATABASE_URL; use sqlite:///relative/file.db or sqlite:////absolute/file.db"
        )
    return Path(url[len(prefix) :])


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each migration shipped with the package, in order."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for index, (version, name, _) in enumerate(found, start=1):
        if version != index:
            raise RuntimeError(f"migration {name} is out of sequence")
    return found


class Database:
    """Writes go through `run()` on the writer thread; reads use a second connection (WAL lets them overlap)."""

    def __init__(self, writer: sqlite3.Connection, executor: ThreadPoolExecutor, reader: aiosqlite.Connection) -> None:
        self._writer = writer  # used only on the executor's single thread
        self._executor = executor
        self._reader = reader
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, upto: int | None = None) -> Database:
        """Open (creating the file and folder if needed) and migrate to the newest schema, or to `upto`."""
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        writer = await loop.run_in_executor(executor, _connect_writer, path)
        reader = await aiosqlite.connect(path, isolation_level=None)
        reader.row_factory = sqlite3.Row
        await reader.execute("PRAGMA busy_timeout = 5000")
        await reader.execute("PRAGMA foreign_keys = ON")
        db = cls(writer, executor, reader)
        try:
            await db.migrate(upto)
        except BaseException:
            await db.close()  # the connections' threads would otherwise keep the process from ever exiting
            raise
        return db

    async def migrate(self, upto: int | None = None) -> int:
        """Apply pending migrations, each in one transaction; return the resulting version."""
        await self._drain()
        return await self._on_writer(_migrate, upto)

    async def version(self) -> int:
        await self._drain()
        return await self._on_writer(_version)

    async def close(self) -> None:
        await self._drain()
        await self._on_writer(sqlite3.Connection.close)
        self._executor.shutdown(wait=True)
        await self._reader.close()

    async def run(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """Apply `write(conn)` atomically and return its result once it is committed.

        `write` runs on the writer thread inside a savepoint of a transaction it may share with other
        writes: it must only touch the connection (no awaits, no I/O elsewhere). If it raises, its own
        changes are rolled back and the exception is raised here; the other writes are unaffected.
        """
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((write, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sqlite-writer")
        return await done

    async def _flush(self) -> None:
        # A task of its own, so a cancelled caller never strands the writes queued behind it.
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                outcomes = await loop.run_in_executor(self._executor, _commit, self._writer, [w for w, _ in batch])
            except asyncio.CancelledError:  # the loop is shutting down: whatever was queued will not be told
                for _, done in batch + self._pending:
                    done.cancel()
                self._pending = []
                raise
            except Exception as exc:  # the commit itself failed: nothing in the batch was applied
                outcomes = [(False, exc)] * len(batch)
            for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if done.done():
                    continue  # its caller was cancelled; the write may still have landed, as with any cancel
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

    async def _drain(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(writer, *args)` on the writer thread, outside any batch (migrations, closing)."""
        call = functools.partial(fn, self._writer, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Run a query and read all of it in one hop to the reader's thread.

        Many tasks share the reader. A cursor left open between hops keeps its read transaction open, and
        every query another task runs meanwhile reads that same old snapshot: with enough concurrency the
        reader never sees a fresh commit (a capture would find its own hold missing). Executing and
        draining in one call ends each statement, and so each read transaction, before the next begins.
        """
        return list(await self._reader.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


# -- on the writer thread ---------------------------------------------------------------------------


def _connect_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode is durable against process crashes (what the crash test kills); only a power cut
    # can lose the last commits, and it never corrupts the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    # Savepoints and statement journals (every write runs in one) go to a temp file by default; in memory a
    # write costs a quarter of the time. They only ever hold the pages one batch touches.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _commit(conn: sqlite3.Connection, writes: list[Write]) -> list[tuple[bool, Any]]:
    """Apply each write in its own savepoint of one transaction; (True, result) or (False, exception) each."""
    outcomes: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            conn.execute("SAVEPOINT one_write")
            try:
                result = write(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE one_write")
                outcomes.append((True, result))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def _migrate(conn: sqlite3.Connection, upto: int | None) -> int:
    current = _version(conn)
    for version, _name, sql in migrations():
        if version <= current or (upto is not None and version > upto):
            continue
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current = version
    return current
