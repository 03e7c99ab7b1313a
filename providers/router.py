"""Failover across providers in the operator's order, with a circuit breaker per provider."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from providers.base import JobHandle, JobSpec, Provider
from providers.errors import (
    CircuitOpen,
    JobRejected,
    OperatorError,
    ProviderError,
    SubmitOutcomeUnknown,
    TransientError,
)

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens after `threshold` failures in a row; lets one trial through after `cooldown` seconds.

    While that trial is out (half-open) every other call is refused; its success closes the breaker, its
    failure opens it for another cooldown. A trial that never reports back expires after one cooldown.
    """

    def __init__(self, threshold: int = 3, cooldown: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def open(self) -> bool:
        return self._opened_at is not None and self._clock() - self._opened_at < self.cooldown

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.cooldown:
            return False
        if self._trial_at is not None and now - self._trial_at < self.cooldown:
            return False  # half-open: one trial is already out
        self._trial_at = now
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_at = None

    def failure(self) -> None:
        self._failures += 1
        self._trial_at = None
        if self._failures >= self.threshold:
            self._opened_at = self._clock()


class NoProviderAccepted(ProviderError):
    """Every provider refused or failed the submit; `operator` is True when the cause was ours, not theirs."""

    def __init__(self, errors: Sequence[ProviderError], *, operator: bool) -> None:
        summary = "; ".join(f"{e.provider}: {e.detail}" for e in errors) or "no provider supports this request"
        super().__init__("router", summary)
        self.errors = list(errors)
        self.operator = operator


@dataclass(frozen=True)
class Accepted:
    provider: Provider
    handle: JobHandle
    skipped: tuple[ProviderError, ...] = ()  # why earlier providers in the order did not take the job


class Router:
    """Chooses a provider for a job and submits it, failing over only while no provider has accepted it."""

    def __init__(self, providers: Sequence[Provider], *, breaker: Callable[[], CircuitBreaker] = CircuitBreaker):
        if not providers:
            raise ValueError("at least one provider is needed")
        self.providers = list(providers)
        self._by_name = {p.name: p for p in self.providers}
        self._breakers = {p.name: breaker() for p in self.providers}

    def get(self, name: str) -> Provider | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    def candidates(self, spec: JobSpec, preferred: str | None = None) -> list[Provider]:
        """Providers able to do this job, the preferred one first."""
        able = [p for p in self.providers if p.capabilities.supports(spec)]
        if preferred:
            able = [p for p in able if p.name == preferred]
        return able

    def quote_usd_micros(self, spec: JobSpec, preferred: str | None = None) -> int | None:
        """The most this job can cost the operator, over the providers it might go to; None if none can."""
        prices = [p.capabilities.price_usd_micros(spec) for p in self.candidates(spec, preferred)]
        return max(prices) if prices else None

    def breaker(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    async def submit(self, spec: JobSpec, preferred: str | None = None) -> Accepted:
        """Submit to the first provider that takes the job.

        Fails over on transient and operator errors (the provider did not take the job), stops on a rejection
        of the job itself, and never fails over after an unknown outcome: the job may exist and be billed.
        """
        errors: list[ProviderError] = []
        for provider in self.candidates(spec, preferred):
            breaker = self._breakers[provider.name]
            if not breaker.allow():
                errors.append(CircuitOpen(provider.name, "skipped: failing repeatedly just now"))
                continue
            try:
                handle = await provider.submit(spec)
            except JobRejected:
                breaker.success()  # the provider answered: it is up, it just will not make this clip
                raise
            except SubmitOutcomeUnknown:
                breaker.failure()
                raise
            except (TransientError, OperatorError) as exc:
                breaker.failure()
                log.warning("submit to %s failed, trying the next provider: %s", provider.name, exc.detail)
                errors.append(exc)
                continue
            breaker.success()
            return Accepted(provider, handle, tuple(errors))
        operator = any(isinstance(e, OperatorError) for e in errors)
        raise NoProviderAccepted(errors, operator=operator)
