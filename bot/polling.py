"""Adaptive polling: sparse while a job is far from done, dense near its expected finish.

Run times are learned per provider and variant (kept in storage). Queue waits are unpredictable, but a
job's processing time is not, so once a provider says a job started, the next polls are aimed at the
learned processing-time window; before that, polls back off geometrically.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from providers.base import JobState
from storage.jobs import JobStore

MIN_GAP = 0.5
MAX_GAP = 15.0
PUSH_SAFETY_GAP = 30.0
MIN_SAMPLES = 3


@dataclass(frozen=True)
class RunModel:
    """Quantiles of processing time for one provider and variant."""

    low: float
    median: float
    high: float
    count: int

    @classmethod
    def from_samples(cls, runs: Sequence[float]) -> RunModel | None:
        if len(runs) < MIN_SAMPLES:
            return None
        ordered = sorted(runs)
        q = statistics.quantiles(ordered, n=20, method="inclusive")
        return cls(low=q[0], median=statistics.median(ordered), high=q[-1], count=len(ordered))


def variant(kind: str, options: dict[str, object]) -> str:
    return f"{kind}/{options.get('resolution')}/{options.get('duration_s')}"


class PollPlanner:
    """Decides when to look at a job again."""

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs
        self._runs: dict[tuple[str, str], list[float]] = {}

    async def model(self, provider: str, key: str) -> RunModel | None:
        runs = self._runs.get((provider, key))
        if runs is None:
            runs = [run for _, run in await self._jobs.run_samples(provider, key)]
            self._runs[(provider, key)] = runs
        return RunModel.from_samples(runs)

    async def learn(self, provider: str, key: str, queue_s: float | None, run_s: float) -> None:
        await self._jobs.record_run(provider, key, queue_s, run_s)
        runs = self._runs.setdefault((provider, key), [])
        runs.append(run_s)
        del runs[:-200]

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
        if push:
            # The webhook will tell us; this poll is only a safety net against a lost callback.
            if model and started_at is not None:
                return max(PUSH_SAFETY_GAP, started_at + model.high * 1.5 - now)
            return PUSH_SAFETY_GAP
        if state is JobState.PROCESSING and started_at is not None and model is not None:
            return _aimed(now - started_at, model)
        age = now - (started_at if started_at is not None else submitted_at)
        return _backoff(age)


def _aimed(running_for: float, model: RunModel) -> float:
    """Wait until the early edge of the learned window, then poll densely through it, then back off."""
    if running_for < model.low:
        return max(MIN_GAP, model.low - running_for)
    if running_for <= model.high:
        window = max(model.high - model.low, 0.1)
        return min(max(MIN_GAP, window / 10), 2.0)
    return _backoff(running_for - model.high)


def _backoff(age: float) -> float:
    return min(MAX_GAP, max(MIN_GAP, 1.0 + age * 0.25))
