"""Ledger throughput: hold+capture pairs per second from 100 concurrent tasks on one SQLite file.

Three scenarios, interleaved run by run so they share the machine's mood:

- ledger:     hold, then capture (what settling a delivered clip costs the ledger alone);
- with jobs:  the job row is written alongside: create (received), hold, advance to held, capture,
              advance to delivered, as the service and lifecycle do around the ledger;
- lifecycle:  as "with jobs" but the job also passes submitting, submitted, queued, processing, completed
              and delivering, so every phase a real job writes is in the measurement.

Each run uses a fresh database file, then checks its books (every balance 0, equal to the sum of its
entries, no hold left open) so a fast but wrong storage layer cannot post a figure.

    python -m bench ledger [-- --runs 5 --tasks 100 --pairs 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import machine, today
from storage.db import Database
from storage.jobs import JobStore, NewJob, Phase
from storage.ledger import EntryKind, Ledger

TARGET = 2000.0
SCENARIOS = ("ledger", "with jobs", "lifecycle")
Worker = Callable[[Ledger, JobStore, str, int], Awaitable[None]]


async def pair(ledger: Ledger, jobs: JobStore, user: str, job_id: int) -> None:
    job = f"{user}/{job_id}"
    await ledger.hold(user, job, 1, actor=user)
    await ledger.capture(job)


async def pair_with_job(ledger: Ledger, jobs: JobStore, user: str, job_id: int) -> None:
    job = f"{user}/{job_id}"
    await jobs.create(_new_job(job, user))
    await ledger.hold(user, job, 1, actor=user)
    await jobs.advance(job, Phase.HELD, only_from=frozenset({Phase.RECEIVED}))
    await ledger.capture(job)
    await jobs.advance(job, Phase.DELIVERED)


LIFECYCLE = (Phase.SUBMITTING, Phase.SUBMITTED, Phase.QUEUED, Phase.PROCESSING, Phase.COMPLETED, Phase.DELIVERING)


async def pair_with_lifecycle(ledger: Ledger, jobs: JobStore, user: str, job_id: int) -> None:
    job = f"{user}/{job_id}"
    await jobs.create(_new_job(job, user))
    await ledger.hold(user, job, 1, actor=user)
    await jobs.advance(job, Phase.HELD, only_from=frozenset({Phase.RECEIVED}))
    for phase in LIFECYCLE:
        await jobs.advance(job, phase)
    await ledger.capture(job)
    await jobs.advance(job, Phase.DELIVERED)


WORKERS: dict[str, Worker] = {"ledger": pair, "with jobs": pair_with_job, "lifecycle": pair_with_lifecycle}


def _new_job(job_id: str, user: str) -> NewJob:
    return NewJob(
        id=job_id,
        user_id=user,
        community_id=None,
        kind="image-to-video",
        prompt="a lighthouse in a storm, waves rising",
        options={"resolution": "512P", "duration_s": 5},
        cost=1,
        reply={"platform": "bench"},
        deadline_at=time.time() + 1200,
        dedupe_key=job_id,
        image_path=None,
        image_mime=None,
        image_url=None,
        webhook_token=None,
    )


async def one_run(folder: Path, scenario: str, *, tasks: int, pairs: int) -> float:
    """Pairs per second for one fresh database; raises if the books do not balance afterwards."""
    db = await Database.open(f"sqlite:///{folder / 'bench.db'}")
    try:
        ledger, jobs = Ledger(db, starting_credits=0), JobStore(db)
        users = [f"bench:{i}" for i in range(tasks)]
        for user in users:
            await ledger.credit(
                user, pairs, kind=EntryKind.GRANT, actor="bench", reason="bench credits", idem_key=f"g:{user}"
            )
        work = WORKERS[scenario]

        async def member(user: str) -> None:
            for n in range(pairs):
                await work(ledger, jobs, user, n)

        started = time.perf_counter()
        await asyncio.gather(*(member(u) for u in users))
        elapsed = time.perf_counter() - started
        await _audit(ledger, users)
        return tasks * pairs / elapsed
    finally:
        await db.close()


async def _audit(ledger: Ledger, users: list[str]) -> None:
    for user in users:
        balance, total = await ledger.balance(user), await ledger.entries_sum(user)
        if balance != 0 or total != 0:
            raise AssertionError(f"{user}: balance {balance}, entries sum {total}; expected 0 and 0")
    if await ledger.open_holds():
        raise AssertionError("holds left open after the run")


async def measure(runs: int, tasks: int, pairs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    for _ in range(runs):
        for name in SCENARIOS:
            with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
                results[name].append(await one_run(Path(tmp), name, tasks=tasks, pairs=pairs))
    return results


def table(results: dict[str, list[float]], *, tasks: int, pairs: int) -> str:
    base = statistics.median(results["ledger"])
    lines = [
        f"{tasks} concurrent tasks × {pairs} pairs each = {tasks * pairs:,} pairs per run, "
        f"{len(results['ledger'])} runs per scenario, median shown.",
        "",
        "| scenario | median pairs/s | min | max | vs ledger alone | target 2,000 |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name, values in results.items():
        med = statistics.median(values)
        ok = "met" if med >= TARGET else "missed"
        lines.append(f"| {name} | {med:,.0f} | {min(values):,.0f} | {max(values):,.0f} | {med / base:.2f}× | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=60, help="hold+capture pairs per task per run")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.runs, args.tasks, args.pairs))
    print(f"Machine: {machine()}\nDate: {today()}\n")
    print(table(results, tasks=args.tasks, pairs=args.pairs))
    return 0 if statistics.median(results["ledger"]) >= TARGET else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
