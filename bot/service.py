"""AnimationService: the platform-neutral front door. Front-ends call it; it never imports them."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot import messages
from bot.budget import within_budget
from bot.config import Settings
from bot.errors import UserError
from bot.media import MediaError, check_image
from bot.policy import credit_cost, dedupe_key, normalise
from bot.ports import AnimateRequest
from bot.tracker import Tracker
from providers.base import JobKind, JobSpec
from providers.router import Router
from storage.jobs import DuplicateJob, Job, JobStore, NewJob, Phase
from storage.ledger import InsufficientCredits, Ledger, LedgerEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What a member is told right after asking: the job, and whether it joined an identical one."""

    job: Job
    joined: bool
    balance: int


def new_job_id() -> str:
    return secrets.token_hex(5)


class AnimationService:
    def __init__(
        self,
        *,
        settings: Settings,
        ledger: Ledger,
        jobs: JobStore,
        router: Router,
        tracker: Tracker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.jobs = jobs
        self.router = router
        self.tracker = tracker
        self._clock = clock
        self.inputs_dir = settings.data_dir / "inputs"

    async def animate(self, req: AnimateRequest) -> Submitted:
        """Validate, hold credits and start a job. UserError (nothing charged) for anything the member can fix."""
        options = normalise(req, self.settings, self.router.names())
        image = None
        if req.kind is JobKind.IMAGE_TO_VIDEO and req.image_bytes is not None:
            try:
                # Decoding a large photo takes a while: keep it off the event loop.
                image = await asyncio.to_thread(
                    check_image,
                    req.image_bytes,
                    max_bytes=self.settings.max_image_bytes,
                    max_pixels=self.settings.max_image_pixels,
                )
            except MediaError as exc:
                raise UserError(exc.user_message) from exc
        user = req.requester.user_id
        key = dedupe_key(req.kind, req.prompt, image.data if image else None, options)
        existing = await self.jobs.open_duplicate(user, key)
        if existing is not None:
            # A double click joins the clip being made before any balance or budget check: the first request
            # already holds the credits, so the second must neither be charged nor refused for lack of them.
            return Submitted(existing, joined=True, balance=await self.balance(user))
        spec = JobSpec(
            kind=req.kind,
            prompt=req.prompt.strip(),
            resolution=options.resolution,
            steps=options.steps,
            acceleration=options.acceleration,
            duration_s=options.duration_s,
            aspect_ratio=options.aspect_ratio,
        )
        quote = self.router.quote_usd_micros(spec, options.provider)
        if quote is None:
            raise UserError(self._why_not(spec, options.provider))
        await self.check_budget(quote)
        await self.ledger.ensure_user(user)
        cost = credit_cost(self.settings, req.kind, options)
        balance = await self.ledger.balance(user)
        if balance < cost:
            raise UserError(messages.not_enough_credits(balance, cost))
        job_id = new_job_id()
        image_path = None
        if image is not None:
            image_path = await self._save_input(job_id, image.data, image.format)
        token = secrets.token_urlsafe(24) if self.settings.public_base_url else None
        try:
            job = await self.jobs.create(
                NewJob(
                    id=job_id,
                    user_id=user,
                    community_id=req.requester.community_id,
                    kind=req.kind.value,
                    prompt=req.prompt.strip(),
                    options=options.as_dict(),
                    cost=cost,
                    reply=dict(req.reply_target),
                    deadline_at=self._clock() + self.settings.job_deadline_seconds,
                    dedupe_key=key,
                    image_path=str(image_path) if image_path else None,
                    image_mime=image.mime if image else None,
                    image_url=req.image_public_url,
                    webhook_token=token,
                )
            )
        except DuplicateJob as dup:
            await _discard(image_path)
            dup_job = await self.jobs.get(dup.existing_id)
            if dup_job is None:  # pragma: no cover - it was open a moment ago
                raise
            return Submitted(dup_job, joined=True, balance=balance)
        try:
            await self.ledger.hold(user, job.id, cost, actor=user)
        except InsufficientCredits as exc:
            # Another request spent the credits between our check and the hold: nothing was charged.
            await self.jobs.advance(job.id, Phase.FAILED, detail="insufficient credits at hold")
            await self.jobs.update(job.id, notified_at=self._clock())
            await _discard(image_path)
            raise UserError(messages.not_enough_credits(exc.balance, cost)) from exc
        await self.jobs.advance(job.id, Phase.HELD, only_from=frozenset({Phase.RECEIVED}))
        self.tracker.poke(job.id)
        held = await self.jobs.get(job.id)
        return Submitted(held or job, joined=False, balance=await self.ledger.balance(user))

    def _why_not(self, spec: JobSpec, preferred: str | None) -> str:
        """One sentence on why no provider can take this job, naming each provider's reason."""
        reasons = [
            f"{p.name}: {p.capabilities.refusal(spec)}"
            for p in self.router.providers
            if preferred in (None, p.name) and p.capabilities.refusal(spec)
        ]
        return messages.PROVIDER_CANNOT.format(what="; ".join(reasons) or spec.kind.value)

    async def check_budget(self, quote_usd_micros: int) -> None:
        """Refuse politely once the operator's daily USD cap would be passed."""
        if not await within_budget(self.settings, self.jobs, quote_usd_micros, self._clock()):
            raise UserError(messages.BUDGET_REACHED)

    async def balance(self, user_id: str) -> int:
        await self.ledger.ensure_user(user_id)
        return await self.ledger.balance(user_id)

    async def history(self, user_id: str, limit: int = 10) -> list[LedgerEntry]:
        return await self.ledger.history(user_id, limit)

    async def resume(self) -> int:
        """Schedule every unfinished job after a restart; returns how many."""
        pending = await self.jobs.unfinished()
        for job in pending:
            self.tracker.poke(job.id)
        return len(pending)

    async def _save_input(self, job_id: str, data: bytes, fmt: str) -> Path:
        path = self.inputs_dir / f"{job_id}.{fmt.lower()}"

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
        return path


async def _discard(path: Path | None) -> None:
    """Drop a saved input that no job will use (a request that joined another, or was refused at the hold)."""
    if path is not None:
        await asyncio.to_thread(path.unlink, missing_ok=True)
