"""Tools for the SIGKILL crash test: the bot as a subprocess, traps in the fal fake, read-only looks at its file.

- `Traps` sits in front of FakeFal's routes: an armed `Trap` fires on the first matching request (route, job
  prompt tag, fal state), tells the test, and can hold the request open (so the bot is mid-call when killed)
  or send half a file.
- `Bot` runs `python -m bot run` (the shell front-end) with a clean environment in its own folder, feeds it
  commands on stdin, collects stdout lines and can be killed with SIGKILL.
- `Books` reads the bot's SQLite file read-only: jobs, phases reached, holds, balances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.fal_faults import Fault
from tests.fakes.fal_server import FakeFal

REPO = Path(__file__).resolve().parent.parent
TAG = re.compile(r"\b(r\d+j\d+)\b")  # every crash-test prompt starts with its round and job, e.g. "r07j2"
ROUTES = ("submit", "status", "result", "cancel", "file")


def tag_of(prompt: object) -> str | None:
    match = TAG.search(str(prompt))
    return match.group(1) if match else None


@dataclass(eq=False)
class Trap:
    """Fires on the first request to `route` for the job tagged `tag` (and, for status, in fal state `state`)."""

    route: str
    tag: str
    state: str | None = None
    mode: str = "hold"  # hold: keep the request open | partial: send half the file, then hold | pass: only tell
    hit: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


class Traps(Fault):
    """One fault object queued (practically forever) on every fal route, consulting the armed traps."""

    def __init__(self, fake: FakeFal) -> None:
        self.fake = fake
        self.armed: list[Trap] = []
        for route in ROUTES:
            fake.faults.add(route, self, times=10**9)

    def arm(self, trap: Trap) -> Trap:
        self.armed.append(trap)
        return trap

    def release_all(self, traps: list[Trap]) -> None:
        for trap in traps:
            trap.gate.set()
            with contextlib.suppress(ValueError):
                self.armed.remove(trap)

    async def apply(self, request: web.Request) -> web.StreamResponse | None:
        route = request.match_info.route.name or ""
        for trap in list(self.armed):
            if trap.route == route and await self._matches(trap, request):
                self.armed.remove(trap)
                return await self._spring(trap, request)
        return None

    async def _matches(self, trap: Trap, request: web.Request) -> bool:
        if route_is(request, "submit"):
            body = await request.json()
            return tag_of(body.get("prompt") if isinstance(body, dict) else None) == trap.tag
        job = self._job_of(request)
        if job is None or tag_of(job.body.get("prompt")) != trap.tag:
            return False
        return trap.state is None or job.state(self.fake.clock()) == trap.state

    def _job_of(self, request: web.Request) -> Any:
        if "rid" in request.match_info:
            return self.fake.jobs.get(request.match_info["rid"])
        name = request.match_info.get("name", "")
        for job in self.fake.jobs.values():
            if str((job.output or {}).get("video", {}).get("url", "")).endswith(f"/files/{name}"):
                return job
        return None

    async def _spring(self, trap: Trap, request: web.Request) -> web.StreamResponse | None:
        if trap.mode == "pass":
            trap.hit.set()
            return None
        if trap.mode == "partial":
            data = self.fake.files[request.match_info["name"]]
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = len(data)
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write(data[: len(data) // 2])
            trap.hit.set()
            await trap.gate.wait()
            if request.transport is not None:
                request.transport.abort()  # the rest never comes
            return response
        trap.hit.set()
        await trap.gate.wait()
        return None  # answer normally, to a client that is gone by now


def route_is(request: web.Request, name: str) -> bool:
    return request.match_info.route.name == name


class Bot:
    """`python -m bot run` in `folder`, talking through stdin/stdout like a person at the shell."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Any, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self._log = log
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, folder: Path, env: dict[str, str], name: str) -> Bot:
        log = (folder / f"{name}.stderr").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=folder,  # no .env here, and the environment below is all it gets
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        return cls(proc, log, name)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.wait_closed()

    async def wait_line(self, pattern: str, timeout: float = 20.0) -> str:
        """The first stdout line matching `pattern`, waiting for it as lines arrive."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                if self._reader.done():
                    raise AssertionError(f"{self.name} exited without printing /{pattern}/:\n{self.text}")
                self._changed.clear()
                await self._changed.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()  # SIGKILL: no cleanup, no flush, no goodbye

    async def finish(self, timeout: float = 40.0) -> int:
        """Wait for the process to end; its exit status."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                await self._reader
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            await self._reader
            raise
        finally:
            await self.close_stdin()
            self._log.close()
        return code


def bot_env(folder: Path, fake: FakeFal, **overrides: str) -> dict[str, str]:
    """Everything the bot reads, and nothing from the developer's environment."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "DATABASE_URL": f"sqlite:///{folder / 'bot.db'}",
        "DATA_DIR": str(folder / "data"),
        "WEB_PORT": "0",
        "PROVIDERS": "fal",
        "FAL_KEY": fake.api_key,
        "FAL_BASE_URL": fake.base_url,
        "FAL_JWKS_URL": fake.jwks_url,
        "STARTING_CREDITS": "40",
        "JOB_DEADLINE_SECONDS": "120",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


@dataclass(frozen=True)
class JobRow:
    id: str
    tag: str
    phase: str
    cost: int
    usd_micros: int
    video_path: str | None


class Books:
    """Read-only looks at the bot's database file (a fresh connection each time, so never a stale snapshot)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # the bot has not created its schema yet
            raise
        finally:
            conn.close()

    def jobs(self) -> list[JobRow]:
        rows = self._query("SELECT id, prompt, state, cost, usd_micros, video_path FROM jobs ORDER BY created_at")
        return [
            JobRow(r["id"], tag_of(r["prompt"]) or "?", r["state"], r["cost"], r["usd_micros"], r["video_path"])
            for r in rows
        ]

    def reached(self, tag: str, phase: str) -> bool:
        """True once the job tagged `tag` has had `phase` written (it may have moved on since)."""
        return bool(
            self._query(
                "SELECT 1 FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE j.prompt LIKE ? AND e.state = ?",
                (f"{tag} %", phase),
            )
        )

    def holds(self) -> dict[str, str]:
        return {r["job_id"]: r["state"] for r in self._query("SELECT job_id, state FROM holds")}

    def entries(self) -> list[sqlite3.Row]:
        return self._query("SELECT user_id, kind, amount, job_id FROM ledger ORDER BY id")

    def balances(self) -> dict[str, int]:
        return {r["id"]: r["balance"] for r in self._query("SELECT id, balance FROM users")}


async def until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.01) -> None:
    """Wait until `predicate()` holds, looking every `interval` seconds; TimeoutError after `timeout`."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)
