"""SIGKILL the bot at many points of a job's life, restart it, and check that nothing was lost or paid twice.

Each round runs `python -m bot run` (shell front-end, fal provider) against a FakeFal on 127.0.0.1 in its own
folder and database, types one to three `/animate` commands, and kills the process with SIGKILL when its
trigger fires: a request the fake holds open (mid-submit, mid-status, mid-download), a phase written to the
database, a line printed by the shell, or a random moment. A second process then starts on the same file
with nothing more on stdin, finishes what was left and exits. The test then reads the database and the fake:
every job ended delivered (hold captured) or refunded (hold released), each member's balance is the
starting credits less 4 per delivered clip and equals the sum of their ledger entries, no hold is left
open, fal saw at most one submit per prompt, and the member was told how each job ended.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.crash_kit import Books, Bot, Trap, Traps, bot_env, tag_of, until
from tests.fakes.clips import png_bytes
from tests.fakes.fal_jobs import COMPLETED, IN_PROGRESS, IN_QUEUE, Plan, Submission
from tests.fakes.fal_server import FakeFal

START, COST, USD_MICROS = 40, 4, 200_000  # credits; one 512P clip; what fal bills for it
MEMBER = "local:local"  # the shell's member
FINAL = {"delivered", "failed", "cancelled", "expired"}
QUICK = Plan(queue_seconds=0.2, processing_seconds=0.3)
WORDS = ("the tide rolls in", "a kite climbs", "leaves fall slowly")
PARALLEL = 3  # rounds at once: each is mostly waiting on polls


@dataclass
class Round:
    number: int
    folder: Path
    fake: FakeFal
    traps: Traps
    books: Books
    armed: list[Trap] = field(default_factory=list)
    bot: Bot | None = None

    def tag(self, job: int) -> str:
        return f"r{self.number:02d}j{job}"


Arm = Callable[[Round], Awaitable[object]]


@dataclass(frozen=True)
class Point:
    """One kill point: the jobs typed (a fal plan each; None = never finishes) and when to pull the plug."""

    name: str
    jobs: tuple[Plan | None, ...]
    arm: Arm
    env: dict[str, str] = field(default_factory=dict)


def at_fal(route: str, job: int = 1, state: str | None = None, mode: str = "hold") -> Arm:
    """Kill while fal holds the job's request on `route` open (or, mode="pass", just as it arrives)."""

    def arm(r: Round) -> Awaitable[object]:
        trap = r.traps.arm(Trap(route, r.tag(job), state, mode))
        r.armed.append(trap)
        return trap.hit.wait()

    return arm


def at_phase(phase: str, job: int = 1) -> Arm:
    """Kill as soon as the job's `phase` is seen written in the database."""

    def arm(r: Round) -> Awaitable[object]:
        return until(lambda: r.books.reached(r.tag(job), phase), timeout=25, interval=0.005)

    return arm


def at_line(pattern: str, count: int = 1) -> Arm:
    """Kill when the shell has printed `count` lines matching `pattern`."""

    async def wait(r: Round) -> None:
        assert r.bot is not None
        bot = r.bot
        await bot.wait_line(pattern, timeout=25)
        await until(lambda: sum(bool(re.search(pattern, line)) for line in bot.lines) >= count)

    return wait


def after(seconds: float) -> Arm:
    """Kill `seconds` after the first job was accepted: a moment nobody chose."""

    async def wait(r: Round) -> None:
        assert r.bot is not None
        await r.bot.wait_line(r"Job \w+ accepted", timeout=25)
        await asyncio.sleep(seconds)

    return wait


SLOW_QUEUE = Plan(queue_seconds=2.5, processing_seconds=0.4)
SLOW_RUN = Plan(queue_seconds=0.0, processing_seconds=2.5)
LATER = Plan(queue_seconds=1.0, processing_seconds=1.5)

AT_FAL = [
    Point("fal holds the submit", (QUICK,), at_fal("submit")),
    Point("fal holds the 2nd submit, 1st job at fal", (LATER, QUICK), at_fal("submit", job=2)),
    Point("fal has just taken the submit", (QUICK,), at_fal("submit", mode="pass")),
    Point(
        "status call while queued", (Plan(queue_seconds=3.0, processing_seconds=0.4),), at_fal("status", state=IN_QUEUE)
    ),
    Point(
        "status call while in progress",
        (Plan(queue_seconds=0.0, processing_seconds=3.0),),
        at_fal("status", state=IN_PROGRESS),
    ),
    Point("status call once completed", (QUICK,), at_fal("status", state=COMPLETED)),
    Point("result call", (QUICK, LATER), at_fal("result")),
    Point("download, before the first byte", (QUICK,), at_fal("file")),
    Point("download, half the file received", (QUICK, LATER), at_fal("file", mode="partial")),
]
AT_PHASE = [
    Point("phase received written", (QUICK, QUICK), at_phase("received")),
    Point("phase held written", (QUICK, QUICK), at_phase("held")),
    Point("phase submitting written", (QUICK, QUICK), at_phase("submitting")),
    Point("phase submitted written", (QUICK, LATER), at_phase("submitted")),
    Point("phase queued written", (SLOW_QUEUE, QUICK), at_phase("queued")),
    Point("phase processing written", (SLOW_RUN, QUICK), at_phase("processing")),
    Point("phase completed written", (QUICK, LATER), at_phase("completed")),
    Point("phase delivering written", (QUICK, LATER), at_phase("delivering")),
    Point("phase delivered written, 2nd job in flight", (QUICK, LATER), at_phase("delivered")),
]
rng = random.Random(20260501)
AT_LINE_OR_RANDOM = [
    Point("printed: 2nd job accepted", (QUICK, QUICK), at_line(r"Job \w+ accepted", count=2)),
    Point("printed: queued", (SLOW_QUEUE,), at_line(r"\] Queued")),
    Point("printed: animating", (SLOW_RUN,), at_line(r"\] Animating")),
    Point("printed: 1st clip delivered, 2 in flight", (QUICK, LATER, SLOW_QUEUE), at_line(r"Here is your clip")),
    *(
        Point(f"random moment #{n}", (QUICK, LATER, SLOW_RUN), after(round(rng.uniform(0.0, 2.5), 2)))
        for n in range(1, 4)
    ),
]
AT_DEADLINE = [
    # JOB_DEADLINE_SECONDS has a floor of 10 s: these two rounds run side by side.
    Point("cancel call at the deadline", (None,), at_fal("cancel"), env={"JOB_DEADLINE_SECONDS": "10"}),
    Point(
        "waiting on a job that will expire",
        (None,),
        at_fal("status", state=IN_QUEUE, mode="pass"),
        env={"JOB_DEADLINE_SECONDS": "10"},
    ),
]


@pytest.fixture
async def fal() -> AsyncIterator[tuple[FakeFal, dict[str, Plan | None]]]:
    plans: dict[str, Plan | None] = {}

    def schedule(sub: Submission) -> Plan | None:
        return plans.get(tag_of(sub.body.get("prompt")) or "", QUICK)

    async with FakeFal.running(schedule=schedule) as fake:
        yield fake, plans


async def crash_rounds(
    points: Sequence[Point], fal: tuple[FakeFal, dict[str, Plan | None]], tmp_path: Path, first: int
) -> None:
    fake, plans = fal
    traps = Traps(fake)
    slots = asyncio.Semaphore(PARALLEL)
    image = tmp_path / "still.png"
    image.write_bytes(png_bytes(96, 64))
    report: list[str] = []

    async def one(number: int, point: Point) -> None:
        async with slots:
            report.append(await crash_round(number, point, fake, plans, traps, tmp_path, image))

    try:
        await asyncio.gather(*(one(first + n, p) for n, p in enumerate(points)))
    finally:
        traps.release_all(list(traps.armed))
        print("\n".join(["", *sorted(report)]))  # which phase each job was in when the bot was killed


async def crash_round(
    number: int, point: Point, fake: FakeFal, plans: dict[str, Plan | None], traps: Traps, base: Path, image: Path
) -> str:
    folder = base / f"round{number:02d}"
    folder.mkdir()
    r = Round(number, folder, fake, traps, Books(folder / "bot.db"))
    for n, plan in enumerate(point.jobs, start=1):
        plans[r.tag(n)] = plan
    env = bot_env(folder, fake, STARTING_CREDITS=str(START), **point.env)
    started = time.monotonic()

    first = r.bot = await Bot.start(folder, env, "first")
    fired = point.arm(r)
    for n in range(1, len(point.jobs) + 1):
        await first.send(f"/animate {image} {r.tag(n)} {WORDS[n - 1]}")
    try:
        async with asyncio.timeout(30):
            await fired
    except TimeoutError:
        first.kill()
        await first.finish()
        raise AssertionError(f"{point.name}: trigger never fired\n{first.text}\n{_stderr(folder, 'first')}") from None
    finally:
        first.kill()
        traps.release_all(r.armed)
    assert await first.finish() == -signal.SIGKILL, f"{point.name}: the first process ended by itself"
    at_kill = {job.tag: job.phase for job in r.books.jobs()}

    restarted = await Bot.start(folder, env, "restart")
    await restarted.close_stdin()  # nothing more to type: finish what is in flight, then exit
    code = await restarted.finish(timeout=45)
    assert code == 0, f"{point.name}: restart exited {code}\n{restarted.text}\n{_stderr(folder, 'restart')}"
    check_books(point, r, first, restarted, at_kill)
    phases = ", ".join(f"{tag[-2:]}:{phase}" for tag, phase in sorted(at_kill.items())) or "no job yet"
    return f"round {number:02d} {point.name:<45} killed at [{phases}] ({time.monotonic() - started:.1f}s)"


def check_books(point: Point, r: Round, first: Bot, restarted: Bot, at_kill: dict[str, str]) -> None:
    """What a member and the operator would check after the restart."""
    name = point.name
    jobs = r.books.jobs()
    assert jobs, f"{name}: the kill came before any job was recorded; the trigger is too early"
    holds = r.books.holds()
    entries = r.books.entries()
    delivered = [job for job in jobs if job.phase == "delivered"]
    submits = Counter(tag_of(call.json.get("prompt")) for call in r.fake.calls("submit") if isinstance(call.json, dict))
    for job in jobs:
        where = f"{name}: job {job.tag} ({job.id}) ended {job.phase}"
        assert job.phase in FINAL, where
        assert submits[job.tag] <= 1, f"{where}: submitted {submits[job.tag]} times"
        kinds = [e["kind"] for e in entries if e["job_id"] == job.id]
        if job.phase == "delivered":
            assert holds.get(job.id) == "captured" and kinds == ["hold", "capture"], f"{where}: {kinds}"
            assert job.usd_micros == USD_MICROS, where
            assert job.video_path and Path(job.video_path).stat().st_size > 0, where
            told = f"[job {job.id}] Here is your clip ({COST} credits)"
        else:
            assert holds.get(job.id, "released") == "released" and kinds in (["hold", "release"], []), (
                f"{where}: {kinds}"
            )
            told = f"[job {job.id}] "
        said = [line for line in first.lines + restarted.lines if line.startswith(told)]
        if job.phase != "delivered":
            said = [line for line in said if f"Your {COST} credits were returned." in line]
        assert said, f"{where}: the member was never told\n--- first:\n{first.text}\n--- restart:\n{restarted.text}"
        if at_kill.get(job.tag) not in FINAL:
            assert any(line.startswith(told) for line in restarted.lines), f"{where}: the restart did not say so"
    assert "held" not in holds.values(), f"{name}: holds left open: {holds}"
    balance = r.books.balances().get(MEMBER, START)
    assert balance == START - COST * len(delivered), f"{name}: balance {balance}, {len(delivered)} delivered"
    assert sum(e["amount"] for e in entries if e["user_id"] == MEMBER) == balance, f"{name}: entries != balance"


def _stderr(folder: Path, name: str) -> str:
    path = folder / f"{name}.stderr"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


async def test_killed_during_provider_calls(fal: tuple[FakeFal, dict[str, Plan | None]], tmp_path: Path) -> None:
    await crash_rounds(AT_FAL, fal, tmp_path, first=1)


async def test_killed_right_after_a_phase_is_written(
    fal: tuple[FakeFal, dict[str, Plan | None]], tmp_path: Path
) -> None:
    await crash_rounds(AT_PHASE, fal, tmp_path, first=20)


async def test_killed_after_a_printed_line_or_at_random(
    fal: tuple[FakeFal, dict[str, Plan | None]], tmp_path: Path
) -> None:
    await crash_rounds(AT_LINE_OR_RANDOM, fal, tmp_path, first=40)


async def test_killed_around_a_deadline(fal: tuple[FakeFal, dict[str, Plan | None]], tmp_path: Path) -> None:
    await crash_rounds(AT_DEADLINE, fal, tmp_path, first=60)
    fake = fal[0]
    # Both jobs outlived their deadline: fal was asked to cancel each (again after the restart if need be).
    cancelled = {call.path.rsplit("/", 2)[-2] for call in fake.calls("cancel")}
    assert {rid for rid, job in fake.jobs.items() if job.cancel_requested} == cancelled and len(cancelled) == 2
    for number in (60, 61):
        assert [job.phase for job in Books(tmp_path / f"round{number}" / "bot.db").jobs()] == ["expired"]
