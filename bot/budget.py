"""The operator's daily USD cap, counted from what providers may bill for jobs submitted today (UTC)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from bot.config import Settings
from storage.jobs import JobStore

alerts = logging.getLogger("animabot.alerts")


def start_of_utc_day(now: float) -> float:
    return datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def cap_usd_micros(settings: Settings) -> int:
    """The daily cap in millionths of a dollar; 0 means no cap."""
    return max(0, round(settings.daily_budget_usd * 1_000_000))


def budget_alert(settings: Settings) -> None:
    alerts.error("operator alert: daily budget of $%.2f reached", settings.daily_budget_usd)


async def within_budget(settings: Settings, jobs: JobStore, quote_usd_micros: int, now: float) -> bool:
    """True if a job quoted at `quote_usd_micros` fits under today's cap (or there is no cap).

    A courtesy check at intake; the binding one is `JobStore.begin_submit`, atomic with the submit itself.
    """
    cap = cap_usd_micros(settings)
    if cap <= 0:
        return True
    spent = await jobs.spent_usd_micros_since(start_of_utc_day(now))
    if spent + quote_usd_micros > cap:
        budget_alert(settings)
        return False
    return True
