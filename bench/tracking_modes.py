"""How the tracking benchmark runs each mode: the real bot (App, Lifecycle, Tracker, PollPlanner, FalProvider,
web server) against FakeFal on 127.0.0.1, plus fal_client's default subscribe loop as a baseline.

Every mode gets its own FakeFal (so request logs stay apart) with the same per-job plan, looked up by prompt:
a job's queue wait and processing time are fixed by the scenario's seed, whichever mode runs it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import App
from bot.config import Settings
from bot.polling import PollPlanner
from bot.ports import AnimateRequest, Delivery, Progress, Requester
from bot.web import bound_port, start_web
from providers.base import JobHandle, JobKind, JobState
from storage.jobs import Job, JobStore
from tests.fakes.clips import png_bytes
from tests.fakes.fal_jobs import Plan, Submission
from tests.fakes.fal_schema import I2V_MODEL
from tests.fakes.fal_server import FakeFal

PLATFORM = "bench"
USER = "bench:member"
FIXED_POLL = 5.0  # the documents' advice (Pixazo: "every 5-10 s")
FAL_CLIENT_POLL = 0.1  # fal_client DEFAULT_QUEUE_POLL_INTERVAL (PROTOCOLS §5)


# -- scenarios ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """How the fake's jobs unfold: (queue seconds, processing seconds) per job, from a seeded generator."""

    name: str
    describe: str
    draw: Callable[[random.Random], tuple[float, float]]
    warm_draw: Callable[[random.Random], tuple[float, float]]  # warm-up jobs: no queue, same processing


def _steady(rng: random.Random) -> tuple[float, float]:
    return rng.uniform(0.0, 100.0), rng.uniform(19.5, 20.5)


def _wide(rng: random.Random) -> tuple[float, float]:
    return 0.0, rng.uniform(20.0, 120.0)


SCENARIOS = {
    "steady": Scenario(
        "steady",
        "queue U(0,100) s, then processing U(19.5,20.5) s: finish 20-120 s",
        _steady,
        lambda rng: (0.0, _steady(rng)[1]),
    ),
    "wide": Scenario(
        "wide",
        "no queue, processing U(20,120) s: finish 20-120 s",
        _wide,
        _wide,
    ),
}


def plans(scenario: Scenario, count: int, seed: int, scale: float, prefix: str) -> dict[str, Plan]:
    """Prompt -> plan, times multiplied by `scale`."""
    rng = random.Random(f"{scenario.name}:{prefix}:{seed}")
    draw = scenario.warm_draw if prefix == "warm-up" else scenario.draw
    out = {}
    for i in range(count):
        queue, run = draw(rng)
        out[f"{prefix} {i}"] = Plan(queue_seconds=queue * scale, processing_seconds=run * scale)
    return out


# -- measurement -------------------------------------------------------------------------------------------


class LagMonitor:
    """How late the event loop wakes a 50 ms sleeper: shows whether the process itself was saturated."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.05)
            self.lags.append(time.perf_counter() - start - 0.05)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def p95(self) -> float:
        return quantile(self.lags, 0.95) if self.lags else 0.0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    i = int(pos)
    if i + 1 >= len(ordered):
        return ordered[-1]
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)


@dataclass
class ModeResult:
    mode: str
    scenario: str
    delays: list[float]  # provider finished -> the client knew (COMPLETED observed), seconds
    status_calls: list[int]  # status requests per job
    held: list[float] = field(default_factory=list)  # provider finished -> result in hand (video on disk / GET done)
    lag_p95: float = 0.0
    note: str = ""
    failures: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "jobs": len(self.delays),
            "mean": statistics.mean(self.delays),
            "p50": quantile(self.delays, 0.5),
            "p95": quantile(self.delays, 0.95),
            "max": max(self.delays),
            "status_per_job": statistics.mean(self.status_calls),
            "held_mean": statistics.mean(self.held) if self.held else None,
            "lag_p95": self.lag_p95,
            "note": self.note,
            "failures": self.failures,
        }


def status_counts(fake: FakeFal) -> Counter[str]:
    """Status requests per fal request id, from the fake's request log."""
    counts: Counter[str] = Counter()
    for req in fake.calls("status"):
        parts = req.path.strip("/").split("/")  # owner/app/requests/{rid}/status
        counts[parts[-2]] += 1
    return counts


def finished_wall(fake: FakeFal, rid: str) -> float:
    job = fake.job(rid)
    assert job.completed is not None
    return job.wall(job.completed)


# -- the real bot ------------------------------------------------------------------------------------------


class FixedPlanner(PollPlanner):
    """The same bot, polling every `interval` seconds whatever it has learned (the documents' advice)."""

    def __init__(self, jobs: JobStore, interval: float) -> None:
        super().__init__(jobs)
        self.interval = interval

    async def next_delay(
        self,
        *,
        provider: str,
        key: str,
        state: JobState,
        now: float,
        submitted_at: float,
        started_at: float | None,
        push: bool,
    ) -> float:
        return self.interval


class NullReply:
    """The member's side is not measured here; deliveries still go through probe and thumbnail."""

    def __init__(self, target: Mapping[str, Any]) -> None:
        self.target = target

    async def progress(self, job: Job, update: Progress) -> None:
        return None

    async def deliver(self, job: Job, video: Delivery, text: str) -> None:
        return None

    async def fail(self, job: Job, text: str) -> None:
        return None


def _settings(workdir: Path, fake: FakeFal) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{workdir}/bench.db",
        data_dir=workdir / "data",
        providers=["fal"],
        fal_key=fake.api_key,  # type: ignore[arg-type]
        fal_base_url=fake.base_url,
        fal_jwks_url=fake.jwks_url,
        starting_credits=1_000_000,
        web_port=0,
        job_deadline_seconds=3600,
    )


async def _submit_all(app: App, prompts: list[str]) -> list[str]:
    ids = []
    image = png_bytes()
    for prompt in prompts:
        req = AnimateRequest(
            requester=Requester(user_id=USER, display="bench"),
            kind=JobKind.IMAGE_TO_VIDEO,
            prompt=prompt,
            reply_target={"platform": PLATFORM},
            image_bytes=image,
        )
        ids.append((await app.service.animate(req)).job.id)
    return ids


async def _wait_all(app: App, ids: list[str], limit: float) -> None:
    async with asyncio.timeout(limit):
        await asyncio.gather(*(app.tracker.wait_finished(i) for i in ids))


async def run_bot_mode(
    mode: str,
    scenario: Scenario,
    *,
    jobs: int,
    seed: int,
    scale: float,
    warmup: int = 0,
    go: asyncio.Event | None = None,
) -> ModeResult:
    """One mode of the real bot: "webhook", "adaptive" or "fixed".

    With `warmup`, that many jobs run first (all at once, no queue) so the planner learns from real
    observations, then `go` is set; without, the mode waits for `go` before submitting, so that every
    mode's measured jobs run side by side.
    """
    measured = plans(scenario, jobs, seed, scale, "job")
    warm = plans(scenario, warmup, seed, scale, "warm-up")
    table = {**measured, **warm}

    def schedule(sub: Submission) -> Plan | None:
        prompt = sub.body.get("prompt") if isinstance(sub.body, dict) else None
        return table.get(str(prompt))

    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        async with FakeFal.running(schedule=schedule) as fake:
            settings = _settings(Path(tmp), fake)
            app = await App.build(settings)
            if mode == "fixed":
                app.lifecycle.planner = FixedPlanner(app.jobs, FIXED_POLL * scale)
            else:
                app.lifecycle.planner = PollPlanner(app.jobs, scale=scale)
            app.add_replies(PLATFORM, NullReply)
            runner = None
            lag = LagMonitor()
            try:
                if mode == "webhook":
                    runner = await start_web(app)
                    settings.public_base_url = f"http://127.0.0.1:{bound_port(runner)}"
                await app.start()
                limit = 200 * scale + 120
                if warm:
                    await _wait_all(app, await _submit_all(app, list(warm)), limit)
                    if go is not None:
                        go.set()
                elif go is not None:
                    await go.wait()
                lag.start()
                ids = await _submit_all(app, list(measured))
                await _wait_all(app, ids, limit)
                await lag.stop()
                return await _collect(mode, scenario, app, fake, ids, lag, warmup)
            finally:
                await lag.stop()
                if runner is not None:
                    await runner.cleanup()
                await app.close()


async def _collect(
    mode: str, scenario: Scenario, app: App, fake: FakeFal, ids: list[str], lag: LagMonitor, warmup: int
) -> ModeResult:
    counts = status_counts(fake)
    delays, held, calls = [], [], []
    failures = 0
    for job_id in ids:
        job = await app.jobs.get(job_id)
        assert job is not None and job.handle is not None
        if job.phase.value != "delivered" or job.finished_at is None:
            failures += 1
            continue
        rid = JobHandle.from_json(job.handle).request_id
        done = finished_wall(fake, rid)
        delays.append(job.finished_at - done)
        held.append(job.updated_at - done)  # the last write: delivered and the member told
        calls.append(counts[rid])
    note = ""
    if mode == "adaptive":
        note = f"after {warmup} warm-up jobs"
    elif mode == "webhook":
        note = f"{len(fake.deliveries)} signed callbacks"
    return ModeResult(mode, scenario.name, delays, calls, held, lag.p95(), note, failures)


# -- fal_client's default subscribe loop ------------------------------------------------------------------


async def run_fal_client_mode(scenario: Scenario, *, jobs: int, seed: int, scale: float) -> ModeResult:
    """What `fal_client.subscribe()` does with its defaults (PROTOCOLS §5): submit, then GET status every 0.1 s
    (logs=false) until COMPLETED, then GET the result. fal_client is not a dependency, so this is its loop
    restated over aiohttp, one coroutine per job, on a pool of 100 connections (httpx's default)."""
    measured = plans(scenario, jobs, seed, scale, "job")

    def schedule(sub: Submission) -> Plan | None:
        prompt = sub.body.get("prompt") if isinstance(sub.body, dict) else None
        return measured.get(str(prompt))

    interval = FAL_CLIENT_POLL * scale
    async with (
        FakeFal.running(schedule=schedule) as fake,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
    ):
        headers = {"Authorization": f"Key {fake.api_key}"}
        image = f"data:image/png;base64,{base64.b64encode(png_bytes()).decode()}"

        async def one(prompt: str) -> tuple[str, float, float]:
            body = {"prompt": prompt, "image_url": image, "resolution": "512P", "duration": "5s"}
            async with session.post(f"{fake.base_url}/{I2V_MODEL}", json=body, headers=headers) as resp:
                handle = await resp.json()
            while True:
                async with session.get(handle["status_url"], params={"logs": "false"}, headers=headers) as resp:
                    status = await resp.json()
                if status.get("status") == "COMPLETED":
                    seen = time.time()
                    break
                await asyncio.sleep(interval)
            async with session.get(handle["response_url"], headers=headers) as resp:
                await resp.read()
            return handle["request_id"], seen, time.time()

        lag = LagMonitor()
        lag.start()
        try:
            async with asyncio.timeout(200 * scale + 120):
                outcomes = await asyncio.gather(*(one(p) for p in measured))
        finally:
            await lag.stop()
        counts = status_counts(fake)
        delays = [seen - finished_wall(fake, rid) for rid, seen, _ in outcomes]
        held = [got - finished_wall(fake, rid) for rid, _, got in outcomes]
        calls = [counts[rid] for rid, _, _ in outcomes]
    return ModeResult(
        f"fal_client {interval:g} s", scenario.name, delays, calls, held, lag.p95(), "no bot: client loop only"
    )
