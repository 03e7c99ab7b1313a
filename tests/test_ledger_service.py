"""Credits as a member sees them through the service: prices, USD cost per job, the daily budget cap, rushes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.errors import UserError
from providers.base import JobKind
from storage.jobs import Phase
from tests.fakes.clips import png_bytes
from tests.fakes.fal_jobs import Plan
from tests.fakes.fal_server import FakeFal
from tests.harness import make_settings, running_app

IMAGE = png_bytes(128, 96)


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal.running(schedule=lambda sub: Plan(queue_seconds=0.05, processing_seconds=0.1)) as fake:
        yield fake


def fal_settings(tmp_path: Path, fake: FakeFal, **overrides: Any) -> Any:
    return make_settings(
        tmp_path,
        providers=["fal"],
        fal_key=fake.api_key,
        fal_base_url=fake.base_url,
        fal_jwks_url=fake.jwks_url,
        **overrides,
    )


def submitted_prompts(fake: FakeFal) -> list[str]:
    return [str(r.json["prompt"]) for r in fake.calls("submit")]


async def test_prices_follow_settings_and_usd_cost_is_recorded(tmp_path: Path, fal: FakeFal) -> None:
    async with running_app(fal_settings(tmp_path, fal, starting_credits=100)) as h:
        asks = [
            (await h.animate(image=IMAGE, prompt="waves roll in"), 4, 200_000),
            (await h.animate(image=IMAGE, prompt="waves roll in", resolution="1024P"), 12, 600_000),
            (await h.animate(prompt="a fox in snow", kind=JobKind.TEXT_TO_VIDEO), 1, 50_000),
            (await h.animate(prompt="a fox in snow", kind=JobKind.TEXT_TO_VIDEO, duration_s=10), 2, 100_000),
        ]
        assert [s.balance for s, _, _ in asks] == [96, 84, 83, 81]  # each hold taken at acceptance
        for submitted, credits, usd_micros in asks:
            job = await h.finish(submitted.job.id)
            assert job.phase is Phase.DELIVERED
            assert (job.cost, job.usd_micros, job.provider) == (credits, usd_micros, "fal")
            assert h.replies.seen(job.id).delivered_text == messages.DONE.format(
                cost=credits, s=messages.plural(credits), balance=81
            )
        assert await h.balance() == 81
        assert await h.app.jobs.spent_usd_micros_since(0) == 950_000


async def test_prices_are_configurable(tmp_path: Path, fal: FakeFal) -> None:
    async with running_app(fal_settings(tmp_path, fal, starting_credits=10, cost_i2v_512p=3)) as h:
        submitted = await h.animate(image=IMAGE)
        assert submitted.job.cost == 3 and submitted.balance == 7
        await h.finish(submitted.job.id)
        assert await h.balance() == 7


async def test_daily_budget_refuses_politely_and_charges_nothing(tmp_path: Path, fal: FakeFal) -> None:
    # $0.50 a day: two 512P clips ($0.20 each) fit, a third would make $0.60.
    async with running_app(fal_settings(tmp_path, fal, starting_credits=40, daily_budget_usd=0.5)) as h:
        for prompt in ("one", "two"):
            job = await h.finish((await h.animate(image=IMAGE, prompt=prompt)).job.id)
            assert job.phase is Phase.DELIVERED
        with pytest.raises(UserError) as refused:
            await h.animate(image=IMAGE, prompt="three")
        assert refused.value.message == messages.BUDGET_REACHED
        assert await h.balance() == 40 - 8
        assert len(await h.app.jobs.recent("test:alice")) == 2
        assert submitted_prompts(fal) == ["one", "two"]
        # A cheaper clip still fits under the cap ($0.45), and is made.
        small = await h.animate(prompt="a kite", kind=JobKind.TEXT_TO_VIDEO)
        assert (await h.finish(small.job.id)).phase is Phase.DELIVERED
        assert await h.balance() == 40 - 8 - 1


async def test_budget_holds_when_many_jobs_reach_the_provider_at_once(tmp_path: Path, fal: FakeFal) -> None:
    # Six members ask at the same moment; all pass intake (nothing spent yet), but only what fits under the
    # $0.50 cap may reach the provider. The rest are refunded with the budget sentence.
    async with running_app(fal_settings(tmp_path, fal, starting_credits=8, daily_budget_usd=0.5)) as h:
        users = [f"test:m{n}" for n in range(6)]
        asks = await asyncio.gather(*(h.animate(user=u, image=IMAGE, prompt=f"clip {u}") for u in users))
        jobs = [await h.finish(s.job.id) for s in asks]
        delivered = [j for j in jobs if j.phase is Phase.DELIVERED]
        refused = [j for j in jobs if j.phase is Phase.FAILED]
        assert len(delivered) == 2 and len(refused) == 4
        assert len(fal.calls("submit")) == 2
        assert await h.app.jobs.spent_usd_micros_since(0) == 400_000
        for job in refused:
            assert h.replies.seen(job.id).failed == [
                messages.BUDGET_REACHED + messages.REFUND_SUFFIX.format(cost=4, s="s")
            ]
            assert await h.balance(job.user_id) == 8
        for job in delivered:
            assert await h.balance(job.user_id) == 4
        assert await h.app.ledger.open_holds() == []


async def test_a_rush_of_requests_spends_exactly_what_the_balance_covers(tmp_path: Path, fal: FakeFal) -> None:
    async with running_app(fal_settings(tmp_path, fal, starting_credits=28)) as h:
        results = await asyncio.gather(
            *(h.animate(image=IMAGE, prompt=f"rush {n}") for n in range(60)), return_exceptions=True
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refusals = [r for r in results if isinstance(r, BaseException)]
        assert len(accepted) == 7
        assert all(isinstance(r, UserError) and r.message.endswith("Nothing was charged.") for r in refusals)
        for submitted in accepted:
            assert (await h.finish(submitted.job.id)).phase is Phase.DELIVERED
        assert await h.balance() == 0
        assert await h.app.ledger.entries_sum("test:alice") == 0
        assert sorted(submitted_prompts(fal)) == sorted(s.job.prompt for s in accepted)
        assert list((h.app.settings.data_dir / "inputs").iterdir()) == []  # no refused member's picture kept


async def test_a_double_click_joins_even_when_the_first_took_the_last_credits(tmp_path: Path, fal: FakeFal) -> None:
    async with running_app(fal_settings(tmp_path, fal, starting_credits=4)) as h:
        first, second = await h.animate(image=IMAGE), await h.animate(image=IMAGE)
        assert second.joined and second.job.id == first.job.id and second.balance == 0
        await h.finish(first.job.id)
        assert await h.balance() == 0
        assert len(fal.calls("submit")) == 1
        # Once delivered, the same request is a new clip (and now there are no credits for it).
        with pytest.raises(UserError, match="costs 4 credits and you have 0"):
            await h.animate(image=IMAGE)


async def test_identical_requests_at_once_are_one_job(tmp_path: Path, fal: FakeFal) -> None:
    async with running_app(fal_settings(tmp_path, fal, starting_credits=20)) as h:
        results = await asyncio.gather(*(h.animate(image=IMAGE, prompt="same") for _ in range(10)))
        assert len({r.job.id for r in results}) == 1
        assert sum(not r.joined for r in results) == 1
        await h.finish(results[0].job.id)
        assert await h.balance() == 16
        assert len(fal.calls("submit")) == 1
        assert list((h.app.settings.data_dir / "inputs").iterdir()) == []
