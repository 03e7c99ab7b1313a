"""The heap tracker (one scheduler for every job in flight) and the adaptive poll planner that feeds it."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot import polling
from bot.polling import PollPlanner, RunModel
from bot.tracker import Tracker
from providers.base import JobState
from storage.db import Database
from storage.jobs import JobStore

Step = Callable[[str], Awaitable[float | None]]


@pytest.fixture
async def run_tracker() -> AsyncIterator[Callable[..., Tracker]]:
    """Build trackers whose run loops are stopped at the end of the test."""
    started: list[tuple[Tracker, asyncio.Task[None]]] = []

    def make(step: Step, **options: float) -> Tracker:
        tracker = Tracker(step, **options)  # type: ignore[arg-type]
        started.append((tracker, asyncio.create_task(tracker.run())))
        return tracker

    yield make
    for tracker, task in started:
        await tracker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Gate:
    """Steps that block until the test opens their gate, recording overlap per job and overall."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, asyncio.Event] = {}
        self.calls: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.max_same_job = 0
        self.running = 0
        self.max_running = 0
        self.result: float | None = None

    def gate(self, job_id: str) -> asyncio.Event:
        return self.gates.setdefault(job_id, asyncio.Event())

    def has_entered(self, job_id: str) -> asyncio.Event:
        return self.entered.setdefault(job_id, asyncio.Event())

    async def __call__(self, job_id: str) -> float | None:
        self.calls[job_id] += 1
        self.active[job_id] += 1
        self.running += 1
        self.max_same_job = max(self.max_same_job, self.active[job_id])
        self.max_running = max(self.max_running, self.running)
        self.has_entered(job_id).set()
        try:
            await self.gate(job_id).wait()
        finally:
            self.active[job_id] -= 1
            self.running -= 1
        return self.result


# -- Tracker ------------------------------------------------------------------------------------------------


async def test_jobs_run_in_due_order(run_tracker: Callable[..., Tracker]) -> None:
    order: list[str] = []

    async def step(job_id: str) -> None:
        order.append(job_id)

    tracker = run_tracker(step, concurrency=1)
    delays = {f"job{i:02d}": 0.01 * i for i in range(20)}
    for job_id in random.Random(7).sample(sorted(delays), len(delays)):
        tracker.schedule(job_id, delays[job_id])
    async with asyncio.timeout(5):
        await tracker.wait_idle()
    assert order == sorted(delays)


async def test_an_earlier_schedule_wins_and_a_later_one_does_not_postpone(run_tracker: Callable[..., Tracker]) -> None:
    ran = asyncio.Event()

    async def step(job_id: str) -> None:
        ran.set()

    tracker = run_tracker(step)
    tracker.schedule("a", 60)
    tracker.schedule("a", 0.05)  # sooner: wins
    tracker.schedule("a", 30)  # later: ignored
    async with asyncio.timeout(2):
        await ran.wait()
    assert tracker.pending() == 0


async def test_a_poke_during_a_step_reruns_it_right_after(run_tracker: Callable[..., Tracker]) -> None:
    gate = Gate()
    gate.result = 60.0  # left alone, the job would next run in a minute
    tracker = run_tracker(gate)
    tracker.poke("a")
    await gate.has_entered("a").wait()
    tracker.poke("a")  # a webhook arrives while the job is being stepped
    tracker.poke("a")  # and a duplicate of it
    gate.entered.pop("a")
    gate.gate("a").set()
    async with asyncio.timeout(2):
        await gate.has_entered("a").wait()  # stepped again at once, not in 60 s
    assert gate.calls["a"] == 2 and gate.max_same_job == 1


async def test_one_step_per_job_even_when_poked_while_waiting_for_a_slot(run_tracker: Callable[..., Tracker]) -> None:
    gate = Gate()
    tracker = run_tracker(gate, concurrency=2)
    tracker.poke("busy1")
    tracker.poke("busy2")
    await gate.has_entered("busy1").wait()
    await gate.has_entered("busy2").wait()  # both slots taken
    tracker.poke("a")  # due: the loop takes it and waits for a slot
    for _ in range(5):
        await asyncio.sleep(0)
    tracker.poke("a")  # poked again (a webhook) while it waits
    gate.gate("busy1").set()
    await gate.has_entered("a").wait()  # "a" got the first free slot and is stepping
    gate.gate("busy2").set()  # a second slot frees up while "a" still runs
    for _ in range(20):
        await asyncio.sleep(0)
    assert gate.max_same_job == 1  # the poke did not become a second, concurrent step of "a"
    gate.gate("a").set()
    async with asyncio.timeout(2):
        await tracker.wait_idle()
    assert gate.calls["a"] == 2  # once, then once more for the poke that came in meanwhile


async def test_concurrency_is_bounded(run_tracker: Callable[..., Tracker]) -> None:
    gate = Gate()
    tracker = run_tracker(gate, concurrency=3)
    jobs = [f"j{i}" for i in range(10)]
    for job_id in jobs:
        tracker.poke(job_id)
    for job_id in jobs[:3]:
        await gate.has_entered(job_id).wait()
    for _ in range(10):
        await asyncio.sleep(0)
    assert gate.running == 3 and tracker.pending() == 10
    for job_id in jobs:
        gate.gate(job_id).set()
    async with asyncio.timeout(2):
        await tracker.wait_idle()
    assert gate.max_running == 3 and sum(gate.calls.values()) == 10


async def test_a_failing_step_is_retried_later_not_lost(
    run_tracker: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def step(job_id: str) -> None:
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("a bug in one step")

    tracker = run_tracker(step, error_delay=0.05)
    tracker.poke("a")
    async with asyncio.timeout(2):
        await tracker.wait_finished("a")
    assert calls == ["a", "a"]
    assert "a bug in one step" in caplog.text  # logged with its traceback, not swallowed


async def test_wait_finished_waits_for_the_step_that_says_done(run_tracker: Callable[..., Tracker]) -> None:
    left = {"a": 3, "b": 1}

    async def step(job_id: str) -> float | None:
        left[job_id] -= 1
        return 0.01 if left[job_id] else None

    tracker = run_tracker(step)
    tracker.poke("a")
    tracker.poke("b")
    async with asyncio.timeout(2):
        await tracker.wait_finished("b")
        assert left["b"] == 0
        await tracker.wait_finished("a")
        assert left["a"] == 0
        await tracker.wait_idle()
    assert tracker.pending() == 0
    async with asyncio.timeout(1):
        await tracker.wait_finished("a")  # already done: returns at once


async def test_many_jobs_share_one_loop_and_all_finish(run_tracker: Callable[..., Tracker]) -> None:
    rounds: Counter[str] = Counter()

    async def step(job_id: str) -> float | None:
        rounds[job_id] += 1
        return 0.001 * (hash(job_id) % 7) if rounds[job_id] < 5 else None

    tracker = run_tracker(step, concurrency=8)
    for i in range(300):
        tracker.poke(f"job{i}")
    async with asyncio.timeout(10):
        await tracker.wait_idle()
    assert len(rounds) == 300 and set(rounds.values()) == {5}
    assert len(asyncio.all_tasks()) < 10  # no coroutine left sleeping per job


async def test_stop_cancels_running_steps_after_the_grace(run_tracker: Callable[..., Tracker]) -> None:
    gate = Gate()
    tracker = run_tracker(gate)
    tracker.poke("a")
    await gate.has_entered("a").wait()
    await tracker.stop(grace=0.05)
    assert gate.running == 0
    assert gate.calls["a"] == 1


async def test_stop_lets_a_running_step_finish_and_starts_no_new_one(run_tracker: Callable[..., Tracker]) -> None:
    gate = Gate()
    tracker = run_tracker(gate)
    tracker.poke("a")
    await gate.has_entered("a").wait()
    stopping = asyncio.create_task(tracker.stop(grace=5))
    await asyncio.sleep(0)  # let stop() begin waiting
    tracker.poke("b")
    gate.gate("a").set()
    await asyncio.wait_for(stopping, 5)
    assert gate.calls["a"] == 1  # it ran to its end rather than being cut off
    assert gate.calls["b"] == 0


# -- PollPlanner --------------------------------------------------------------------------------------------


class Samples:
    """The two JobStore calls the planner makes, in memory."""

    def __init__(self, runs: list[float] | None = None) -> None:
        self.rows: list[tuple[str, str, float | None, float]] = [("fal", "k", None, r) for r in runs or []]

    async def run_samples(self, provider: str, variant: str) -> list[tuple[float | None, float]]:
        return [(q, r) for p, v, q, r in self.rows if (p, v) == (provider, variant)]

    async def record_run(self, provider: str, variant: str, queue_s: float | None, run_s: float, keep: int) -> None:
        self.rows.append((provider, variant, queue_s, run_s))


def planner(runs: list[float] | None = None, scale: float = 1.0) -> PollPlanner:
    return PollPlanner(Samples(runs), scale=scale)  # type: ignore[arg-type]


async def delay(
    p: PollPlanner,
    state: JobState,
    age: float,
    started_ago: float | None = None,
    *,
    push: bool = False,
) -> float:
    now = 1000.0
    return await p.next_delay(
        provider="fal",
        key="k",
        state=state,
        now=now,
        submitted_at=now - age,
        started_at=None if started_ago is None else now - started_ago,
        push=push,
    )


STEADY = [19.5 + i / 100 for i in range(101)]  # a fixed-size clip: 19.5-20.5 s of processing


async def test_without_samples_it_backs_off_geometrically() -> None:
    p = planner()
    gaps = [await delay(p, JobState.QUEUED, age) for age in (0, 4, 20, 60, 600)]
    assert gaps == [1.0, 2.0, 6.0, 15.0, 15.0]


async def test_with_a_webhook_polls_are_a_sparse_safety_net() -> None:
    assert await delay(planner(), JobState.QUEUED, 0, push=True) == 30.0
    assert await delay(planner(STEADY), JobState.PROCESSING, 5, 5, push=True) == 30.0
    # For long runs the net waits until well past the longest learned one.
    long_runs = [100.0 + i for i in range(21)]
    assert await delay(planner(long_runs), JobState.PROCESSING, 5, 5, push=True) == pytest.approx(120 * 1.5 - 5)


async def test_queued_jobs_are_looked_at_every_half_of_the_shortest_run() -> None:
    gap = await delay(planner(STEADY), JobState.QUEUED, 40)
    assert gap == pytest.approx(RunModel.from_samples(STEADY).low / 2)  # type: ignore[union-attr]
    assert 9.5 < gap < 10.0


async def test_a_started_job_sleeps_until_the_window_then_polls_densely() -> None:
    p = planner(STEADY)
    assert await delay(p, JobState.PROCESSING, 30, 4.0) == pytest.approx(19.52 - 4.0)
    inside = await delay(p, JobState.PROCESSING, 60, 19.8)
    assert inside == polling.MIN_GAP  # the whole window is a second wide: every half second
    late = await delay(p, JobState.PROCESSING, 90, 40.0)
    assert late == pytest.approx(1.0 + (40.0 - 20.5) / 4)  # past every learned run: back off again


async def test_a_wide_distribution_is_polled_at_equal_probability_steps() -> None:
    wide = [20.0 + i for i in range(101)]  # 20-120 s, uniform
    p = planner(wide)
    gap = await delay(p, JobState.PROCESSING, 60, 50.0)
    assert gap == polling.MAX_WINDOW_GAP  # 4 % of these runs span 4 s
    bimodal = [20.0 + i / 50 for i in range(50)] + [80.0 + i / 50 for i in range(50)]
    p = planner(bimodal)
    assert await delay(p, JobState.PROCESSING, 30, 20.2) == polling.MIN_GAP  # dense in the first mode
    assert await delay(p, JobState.PROCESSING, 60, 50.0) == polling.MAX_WINDOW_GAP  # sparse in the gap


async def test_scale_compresses_every_gap() -> None:
    assert await delay(planner(scale=0.1), JobState.QUEUED, 0) == pytest.approx(0.1)
    assert await delay(planner(scale=0.1), JobState.QUEUED, 0, push=True) == pytest.approx(3.0)


async def test_the_planner_learns_and_its_samples_survive_a_restart(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path}/plan.db")
    try:
        jobs = JobStore(db)
        first = PollPlanner(jobs)
        assert await first.model("fal", "k") is None
        for run in (19.6, 20.0, 20.4):
            await first.learn("fal", "k", 3.0, run)
        model = await first.model("fal", "k")
        assert model is not None and model.count == 3 and model.median == 20.0
        again = PollPlanner(jobs)  # a new process: reads what storage kept
        assert await again.model("fal", "k") == model
    finally:
        await db.close()


async def test_adaptive_polling_beats_a_fixed_5s_poll_on_steady_clips() -> None:
    """The planner's rules in a pure simulation (no I/O): queue 0-100 s, then 19.5-20.5 s of processing,
    start time known to the second's fraction (fal's runner logs). The benchmark measures the same end to end."""
    rng = random.Random(3)
    p = planner([rng.uniform(19.5, 20.5) for _ in range(50)])
    adaptive_delays, adaptive_polls, fixed_polls = [], [], []
    for _ in range(200):
        queue, run = rng.uniform(0, 100), rng.uniform(19.5, 20.5)
        finish = queue + run
        t, polls = 0.0, 0
        while True:
            state = JobState.QUEUED if t < queue else JobState.PROCESSING
            t += await delay_at(p, state, t, queue if t >= queue else None)
            polls += 1
            if t >= finish:
                break
        adaptive_delays.append(t - finish)
        adaptive_polls.append(polls)
        fixed_polls.append(int(finish // 5) + 1)
    assert statistics.mean(adaptive_delays) < 0.5
    assert statistics.mean(adaptive_polls) < statistics.mean(fixed_polls)


async def delay_at(p: PollPlanner, state: JobState, t: float, started: float | None) -> float:
    return await p.next_delay(
        provider="fal", key="k", state=state, now=t, submitted_at=0.0, started_at=started, push=False
    )


async def test_done_markers_are_bounded_but_a_waiter_is_never_dropped(
    run_tracker: Callable[..., Tracker], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "FINISHED_KEPT", 3)
    release = asyncio.Event()

    async def step(job_id: str) -> float | None:
        if job_id == "slow":
            await release.wait()
        return None

    tracker = run_tracker(step)
    waiter = asyncio.create_task(tracker.wait_finished("slow"))
    tracker.poke("slow")
    for i in range(20):
        tracker.poke(f"quick-{i}")
        await asyncio.wait_for(tracker.wait_finished(f"quick-{i}"), 5)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(waiter, 5)  # still woken after 20 other jobs finished past the bound
    await asyncio.wait_for(tracker.wait_finished("quick-19"), 5)  # recent ones are remembered
