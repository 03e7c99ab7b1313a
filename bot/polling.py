"""Adaptive polling: sparse while a job is far from done, dense near its expected finish.

Run times (processing only, from the provider's start to its finish) are learned per provider and variant
and kept in storage. Queue waits are unpredictable, but the processing time of a fixed-size clip is not,
so the planner works in two stages:

* queued: look every half of the shortest learned run. A job that starts is then noticed well before it
  can finish, and (with the provider's start timestamp) its finish can be aimed at precisely;
* processing: sleep until the early edge of the learned run-time distribution, then poll at steps of equal
  probability (each gap covers `STEP` of the learned runs, between `MIN_GAP` and `MAX_WINDOW_GAP` seconds):
  dense where runs usually end, sparse where they rarely do. Past the longest learned run, back off.

Until `MIN_SAMPLES` runs are known the planner backs off geometrically from the submit. With a webhook
registered, polls are only a safety net against a lost callback. `scale` multiplies every gap, for tests
and benchmarks that compress time.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from providers.base import JobState
from storage.jobs import JobStore

MIN_GAP = 0.5  # never poll one job more often than this
MAX_GAP = 15.0  # never leave a job unobserved longer than this (without a webhook)
MAX_WINDOW_GAP = 4.0  # inside the learned window, never sparser than this
PUSH_SAFETY_GAP = 30.0  # with a webhook: a safety-net look this often
STEP = 0.04  # each poll inside the window covers this share of the learned runs
EDGE_QUANTILE = 0.02  # the window opens at this quantile of the learned runs
QUEUE_FRACTION = 0.5  # while queued, look every this share of the shortest usual run
MIN_SAMPLES = 3
KEEP_SAMPLES = 200


@dataclass(frozen=True)
class RunModel:
    """The learned processing times of one provider and variant, sorted."""

    runs: tuple[float, ...]

    @classmethod
    def from_samples(cls, runs: Sequence[float]) -> RunModel | None:
        usable = sorted(r for r in runs if r >= 0)
        if len(usable) < MIN_SAMPLES:
            return None
        return cls(tuple(usable))

    @property
    def count(self) -> int:
        return len(self.runs)

    @property
    def low(self) -> float:
        """Where the window opens: almost every run lasts at least this long."""
        return self.quantile(EDGE_QUANTILE)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def high(self) -> float:
        """The longest learned run: past it the job is late and polling backs off."""
        return self.runs[-1]

    def quantile(self, q: float) -> float:
        """Linear interpolation between order statistics (q in [0, 1])."""
        runs = self.runs
        pos = min(max(q, 0.0), 1.0) * (len(runs) - 1)
        i = int(pos)
        if i + 1 >= len(runs):
            return runs[-1]
        return runs[i] + (runs[i + 1] - runs[i]) * (pos - i)

    def share_below(self, t: float) -> float:
        """The fraction of learned runs that had ended by `t` seconds (the inverse of `quantile`)."""
        runs = self.runs
        if t <= runs[0]:
            return 0.0
        if t >= runs[-1]:
            return 1.0
        i = bisect.bisect_right(runs, t) - 1
        span = runs[i + 1] - runs[i]
        within = (t - runs[i]) / span if span > 0 else 1.0
        return (i + within) / (len(runs) - 1)


def variant(kind: str, options: dict[str, object]) -> str:
    return f"{kind}/{options.get('resolution')}/{options.get('duration_s')}"


class PollPlanner:
    """Decides when to look at a job again."""

    def __init__(self, jobs: JobStore, *, scale: float = 1.0) -> None:
        self._jobs = jobs
        self._scale = scale
        self._runs: dict[tuple[str, str], list[float]] = {}
        self._models: dict[tuple[str, str], RunModel | None] = {}

    async def model(self, provider: str, key: str) -> RunModel | None:
        cache_key = (provider, key)
        if cache_key in self._models:
            return self._models[cache_key]
        runs = self._runs.get(cache_key)
        if runs is None:
            runs = [run for _, run in await self._jobs.run_samples(provider, key)][-KEEP_SAMPLES:]
            self._runs[cache_key] = runs
        model = RunModel.from_samples(runs)
        self._models[cache_key] = model
        return model

    async def learn(self, provider: str, key: str, queue_s: float | None, run_s: float) -> None:
        await self._jobs.record_run(provider, key, queue_s, run_s, keep=KEEP_SAMPLES)
        cache_key = (provider, key)
        if cache_key not in self._runs:
            await self.model(provider, key)  # load what storage had before adding to it
        runs = self._runs[cache_key]
        runs.append(run_s)
        del runs[:-KEEP_SAMPLES]
        self._models.pop(cache_key, None)

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
        """Seconds until the next status call for a job that is not finished yet."""
        model = await self.model(provider, key)
        s = self._scale
        if push:
            # The webhook will tell us; this poll is only a safety net against a lost callback.
            if model and started_at is not None:
                return max(PUSH_SAFETY_GAP * s, started_at + model.high * 1.5 - now)
            return PUSH_SAFETY_GAP * s
        if model is None:
            return _backoff(now - (started_at if started_at is not None else submitted_at), s)
        if state is JobState.PROCESSING and started_at is not None:
            return _aimed(now - started_at, model, s)
        return min(MAX_GAP * s, max(MIN_GAP * s, model.low * QUEUE_FRACTION))


def _aimed(running_for: float, model: RunModel, s: float) -> float:
    """Sleep until the window opens, then poll at equal-probability steps through it, then back off."""
    low, high = model.low, model.high
    if running_for < low:
        return max(MIN_GAP * s, low - running_for)
    if running_for < high:
        target = model.quantile(model.share_below(running_for) + STEP)
        return min(MAX_WINDOW_GAP * s, max(MIN_GAP * s, target - running_for))
    return _backoff(running_for - high, s)


def _backoff(age: float, s: float) -> float:
    """Geometric back-off: about 1 s early on, a quarter of the age later, capped at MAX_GAP."""
    return min(MAX_GAP * s, max(MIN_GAP * s, 1.0 * s + age * 0.25))
