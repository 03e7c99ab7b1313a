"""SQLite through aiosqlite: one writer connection behind a lock, one reader, numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


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
    """Writes go one at a time through `write()`; reads use a second connection (WAL lets them overlap)."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, upto: int | None = None) -> Database:
        """Open (creating the file and folder if needed) and migrate to the newest schema, or to `upto`."""
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        reader = await aiosqlite.connect(path, isolation_level=None)
        for conn in (writer, reader):
            conn.row_factory = sqlite3.Row
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA foreign_keys = ON")
        await writer.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode is durable against process crashes (what the crash test kills); only a power cut
        # can lose the last commits, and it never corrupts the file.
        await writer.execute("PRAGMA synchronous = NORMAL")
        db = cls(writer, reader)
        await db.migrate(upto)
        return db

    async def migrate(self, upto: int | None = None) -> int:
        """Apply pending migrations, each in one transaction; return the resulting version."""
        async with self._lock:
            current = await self._version()
            for version, _name, sql in migrations():
                if version <= current or (upto is not None and version > upto):
                    continue
                await self._writer.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
                current = version
            return current

    async def _version(self) -> int:
        async with self._writer.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def version(self) -> int:
        async with self._lock:
            return await self._version()

    async def close(self) -> None:
        await self._writer.close()
        await self._reader.close()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of the writer for one statement or one `BEGIN … COMMIT` the caller runs."""
        async with self._lock:
            yield self._writer

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the writer, rolled back on any error (cancellation included)."""
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await asyncio.shield(self._writer.execute("ROLLBACK"))
                raise
            await self._writer.execute("COMMIT")

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._reader.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._reader.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return row
