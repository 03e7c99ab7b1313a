"""The failover router and its per-provider circuit breaker, in isolation (scripted providers, a hand-wound clock)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from providers.base import (
    Capabilities,
    ImageInput,
    JobHandle,
    JobKind,
    JobSpec,
    JobStatus,
    VideoResult,
    WebhookEvent,
    usd,
)
from providers.errors import (
    CircuitOpen,
    InsufficientBalance,
    JobRejected,
    OperatorError,
    ProviderError,
    SubmitOutcomeUnknown,
    TransientError,
)
from providers.router import CircuitBreaker, NoProviderAccepted, Router
from tests.fakes.fal_testkit import ManualClock

I2V_ONLY = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO}),
    resolutions=("512P",),
    durations=(5,),
    prices_usd_micros={(JobKind.IMAGE_TO_VIDEO, "512P", 5): usd("0.20")},
)
BOTH = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO, JobKind.TEXT_TO_VIDEO}),
    resolutions=("512P",),
    durations=(5,),
    prices_usd_micros={
        (JobKind.IMAGE_TO_VIDEO, "512P", 5): usd("0.30"),
        (JobKind.TEXT_TO_VIDEO, "any", 5): usd("0.05"),
    },
)
I2V = JobSpec(JobKind.IMAGE_TO_VIDEO, "waves", image=ImageInput(b"png", "image/png"))
T2V = JobSpec(JobKind.TEXT_TO_VIDEO, "a dog")


class Scripted:
    """A provider whose submits answer from a script: an exception to raise, or None to accept."""

    def __init__(self, name: str, *outcomes: ProviderError | None, capabilities: Capabilities = I2V_ONLY) -> None:
        self.name = name
        self.capabilities = capabilities
        self.outcomes = list(outcomes)
        self.submits = 0

    async def submit(self, spec: JobSpec) -> JobHandle:
        self.submits += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return JobHandle(self.name, f"{self.name}-{self.submits}")

    async def status(self, handle: JobHandle) -> JobStatus:
        raise NotImplementedError

    async def result(self, handle: JobHandle) -> VideoResult:
        raise NotImplementedError

    async def cancel(self, handle: JobHandle) -> bool:
        return False

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        return None


def down(name: str) -> TransientError:
    return TransientError(name, "HTTP 503: busy", status=503)


# -- CircuitBreaker -----------------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_failures_in_a_row() -> None:
    clock = ManualClock(0.0)
    breaker = CircuitBreaker(threshold=3, cooldown=60, clock=clock)
    breaker.failure()
    breaker.failure()
    assert breaker.allow() and not breaker.open
    breaker.failure()
    assert breaker.open and not breaker.allow()


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60, clock=ManualClock(0.0))
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.allow()  # two in a row again, not four


def test_breaker_half_opens_after_cooldown_for_one_trial_only() -> None:
    clock = ManualClock(0.0)
    breaker = CircuitBreaker(threshold=2, cooldown=60, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.advance(59.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # everyone else waits for the trial's outcome
    breaker.success()
    assert breaker.allow() and breaker.allow()  # closed again


def test_a_failed_trial_reopens_for_a_full_cooldown() -> None:
    clock = ManualClock(0.0)
    breaker = CircuitBreaker(threshold=3, cooldown=60, clock=clock)
    for _ in range(3):
        breaker.failure()
    clock.advance(61)
    assert breaker.allow()
    breaker.failure()  # one failure is enough while half-open
    assert breaker.open and not breaker.allow()
    clock.advance(59)
    assert not breaker.allow()
    clock.advance(2)
    assert breaker.allow()


def test_a_trial_that_never_reports_back_expires() -> None:
    clock = ManualClock(0.0)
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.advance(11)
    assert breaker.allow()
    clock.advance(5)
    assert not breaker.allow()
    clock.advance(6)
    assert breaker.allow()  # the lost trial no longer blocks the provider


# -- Router ---------------------------------------------------------------------------------------------


async def test_first_provider_that_accepts_wins_in_the_configured_order() -> None:
    fal, pixazo, wavespeed = Scripted("fal"), Scripted("pixazo"), Scripted("wavespeed")
    router = Router([fal, pixazo, wavespeed])
    accepted = await router.submit(I2V)
    assert accepted.provider is fal and accepted.skipped == ()
    assert (fal.submits, pixazo.submits, wavespeed.submits) == (1, 0, 0)


@pytest.mark.parametrize(
    "error",
    [
        down("fal"),
        TransientError("fal", "HTTP 429", status=429, retry_after=3),
        OperatorError("fal", "the API key was refused (401)", status=401),
        InsufficientBalance("fal", "out of balance", status=402),
    ],
    ids=["503", "429", "401", "402"],
)
async def test_fails_over_when_the_provider_did_not_take_the_job(error: ProviderError) -> None:
    fal, pixazo = Scripted("fal", error), Scripted("pixazo")
    accepted = await Router([fal, pixazo]).submit(I2V)
    assert accepted.provider is pixazo
    assert accepted.skipped == (error,)  # the lifecycle alerts the operator on skipped operator errors


@pytest.mark.parametrize(
    "error",
    [JobRejected("fal", "image could not be downloaded", status=422), SubmitOutcomeUnknown("fal", "timed out")],
    ids=["rejected", "unknown-outcome"],
)
async def test_never_fails_over_a_rejected_job_or_one_that_may_exist(error: ProviderError) -> None:
    fal, pixazo = Scripted("fal", error), Scripted("pixazo")
    with pytest.raises(type(error)):
        await Router([fal, pixazo]).submit(I2V)
    assert pixazo.submits == 0


async def test_no_provider_accepted_says_whether_the_operator_must_act() -> None:
    router = Router([Scripted("fal", down("fal")), Scripted("pixazo", down("pixazo"))])
    with pytest.raises(NoProviderAccepted) as busy:
        await router.submit(I2V)
    assert not busy.value.operator and [e.provider for e in busy.value.errors] == ["fal", "pixazo"]
    router = Router([Scripted("fal", down("fal")), Scripted("pixazo", InsufficientBalance("pixazo", "empty"))])
    with pytest.raises(NoProviderAccepted) as broke:
        await router.submit(I2V)
    assert broke.value.operator


async def test_an_open_breaker_skips_the_provider_then_lets_a_trial_through() -> None:
    clock = ManualClock(0.0)
    fal = Scripted("fal", down("fal"), down("fal"), down("fal"))
    pixazo = Scripted("pixazo")
    router = Router([fal, pixazo], breaker=lambda: CircuitBreaker(threshold=3, cooldown=60, clock=clock))
    for _ in range(3):
        assert (await router.submit(I2V)).provider is pixazo
    assert fal.submits == 3 and router.breaker("fal").open
    accepted = await router.submit(I2V)
    assert accepted.provider is pixazo and fal.submits == 3  # skipped without a request
    assert isinstance(accepted.skipped[0], CircuitOpen)
    clock.advance(61)
    assert (await router.submit(I2V)).provider is fal  # the trial succeeds: fal is back
    assert fal.submits == 4 and not router.breaker("fal").open


async def test_a_rejection_counts_as_the_provider_answering() -> None:
    clock = ManualClock(0.0)
    fal = Scripted("fal", down("fal"), down("fal"), JobRejected("fal", "bad prompt", status=422))
    router = Router([fal, Scripted("pixazo")], breaker=lambda: CircuitBreaker(threshold=3, cooldown=60, clock=clock))
    await router.submit(I2V)
    await router.submit(I2V)
    with pytest.raises(JobRejected):
        await router.submit(I2V)
    assert router.breaker("fal").allow()  # two failures, then an answer: not a dead provider


async def test_only_providers_able_to_do_the_job_are_tried() -> None:
    pixazo, fal = Scripted("pixazo"), Scripted("fal", capabilities=BOTH)
    router = Router([pixazo, fal])
    assert (await router.submit(T2V)).provider is fal and pixazo.submits == 0
    assert [p.name for p in router.candidates(I2V, "fal")] == ["fal"]
    assert router.quote_usd_micros(I2V) == usd("0.30")  # the dearest place the job might go
    assert router.quote_usd_micros(I2V, "pixazo") == usd("0.20")
    with pytest.raises(NoProviderAccepted):
        await Router([pixazo]).submit(T2V)


def test_a_router_needs_a_provider() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Router([])
