"""The job state machine. `step()` reads a job's phase from storage, does the next thing, writes the result.

Every phase is written before it is acted on, so a process killed at any instant picks up where it was:
a job in SUBMITTING is never resent (its outcome is unknown: refund), a job at a provider is tracked,
a clip on disk is delivered, and credits are captured or released exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bot import messages
from bot.budget import budget_alert, cap_usd_micros, start_of_utc_day
from bot.config import Settings
from bot.media import MediaError, make_thumbnail, probe_video
from bot.polling import PollPlanner, variant
from bot.ports import Delivery, DeliveryFailed, Progress, Reply, ReplyFactory
from providers.base import ImageInput, JobHandle, JobKind, JobSpec, JobState, JobStatus, VideoResult
from providers.download import download_video
from providers.errors import (
    JobRejected,
    OperatorError,
    ProviderError,
    ResultUnusable,
    SubmitOutcomeUnknown,
    TransientError,
)
from providers.router import NoProviderAccepted, Router
from storage.jobs import AT_PROVIDER, FINAL, Claim, Job, JobStore, Phase
from storage.ledger import InsufficientCredits, Ledger

log = logging.getLogger(__name__)
alerts = logging.getLogger("animabot.alerts")

RETRY_SOON = 2.0
MAX_FINISH_ATTEMPTS = 8


class Lifecycle:
    def __init__(
        self,
        *,
        settings: Settings,
        ledger: Ledger,
        jobs: JobStore,
        router: Router,
        planner: PollPlanner,
        session: aiohttp.ClientSession,
        replies: Mapping[str, ReplyFactory],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.jobs = jobs
        self.router = router
        self.planner = planner
        self.session = session
        self.replies = dict(replies)
        self._clock = clock
        self._attempts: dict[str, int] = {}
        self._last_progress: dict[str, tuple[Phase, int | None]] = {}
        self._looked: dict[str, float] = {}  # when each job was last seen unfinished at its provider
        self.videos_dir = settings.data_dir / "videos"

    def reply_for(self, job: Job) -> Reply | None:
        factory = self.replies.get(str(job.reply.get("platform")))
        return factory(job.reply) if factory else None

    async def step(self, job_id: str) -> float | None:
        """Advance one job; return seconds until it needs another look, or None when it is done."""
        job = await self.jobs.get(job_id)
        if job is None:
            return None
        if job.phase in FINAL:
            # Killed between writing the final phase and settling? Settle now: both calls are idempotent.
            if job.phase is Phase.DELIVERED:
                await self.ledger.capture(job.id)
            else:
                await self.ledger.release(job.id, reason=f"job {job.phase.value}")
            return await self._notify_final(job)
        if (
            job.phase in (Phase.RECEIVED, Phase.HELD, Phase.SUBMITTING, *AT_PROVIDER)
            and self._clock() > job.deadline_at
        ):
            return await self._expire(job)
        match job.phase:
            case Phase.RECEIVED:
                return await self._hold(job)
            case Phase.HELD:
                return await self._submit(job)
            case Phase.SUBMITTING:
                # We died during the submit call: the provider may have the job. Never resend it.
                alerts.error("job %s: submit outcome unknown after a restart; refunding", job.id)
                return await self._fail(job, messages.UNKNOWN_OUTCOME, charged=True)
            case Phase.SUBMITTED | Phase.QUEUED | Phase.PROCESSING:
                return await self._track(job)
            case Phase.COMPLETED:
                return await self._fetch(job)
            case Phase.DELIVERING:
                return await self._deliver(job)
        return None  # pragma: no cover - every phase is handled above

    # -- phases ---------------------------------------------------------------------------------

    async def _hold(self, job: Job) -> float | None:
        """A job recorded but not yet held (we died in between): hold now, or fail without charge."""
        try:
            await self.ledger.hold(job.user_id, job.id, job.cost, actor=job.user_id)
        except InsufficientCredits as exc:
            await self.jobs.advance(job.id, Phase.FAILED, detail="insufficient credits", error="insufficient credits")
            return await self._notify_final(job, messages.not_enough_credits(exc.balance, job.cost))
        await self.jobs.advance(job.id, Phase.HELD, only_from=frozenset({Phase.RECEIVED}))
        return 0.0

    async def _submit(self, job: Job) -> float | None:
        spec = await self._spec(job)
        preferred = job.options.get("provider")
        quote = self.router.quote_usd_micros(spec, str(preferred) if preferred else None)
        if quote is None:
            # The providers configured at start-up changed since the job was accepted.
            return await self._fail(job, messages.PROVIDER_CANNOT.format(what=job.kind), charged=False)
        now = self._clock()
        claim = await self.jobs.begin_submit(
            job.id, usd_micros=quote, cap_usd_micros=cap_usd_micros(self.settings), since=start_of_utc_day(now)
        )
        if claim is Claim.OVER_BUDGET:
            budget_alert(self.settings)
            return await self._fail(job, messages.BUDGET_REACHED, charged=False)
        if claim is Claim.MOVED:
            return 0.0
        try:
            accepted = await self.router.submit(spec, str(preferred) if preferred else None)
        except JobRejected as exc:
            return await self._fail(job, messages.REJECTED.format(reason=_sentence(exc.detail)), charged=False)
        except SubmitOutcomeUnknown as exc:
            alerts.error("job %s: %s", job.id, exc)
            return await self._fail(job, messages.UNKNOWN_OUTCOME, charged=True)
        except NoProviderAccepted as exc:
            if exc.operator:
                alerts.error("job %s: no provider accepted it: %s", job.id, exc.detail)
                return await self._fail(job, messages.OPERATOR_PROBLEM, charged=False)
            return await self._fail(job, messages.PROVIDERS_DOWN, charged=False)
        now = self._clock()
        await self.jobs.advance(
            job.id,
            Phase.SUBMITTED,
            only_from=frozenset({Phase.SUBMITTING}),
            detail=accepted.provider.name,
            provider=accepted.provider.name,
            handle=accepted.handle.to_json(),
            usd_micros=accepted.provider.capabilities.price_usd_micros(spec),
            provider_charged=True,
            submitted_at=now,
        )
        log.info("job %s submitted to %s as %s", job.id, accepted.provider.name, accepted.handle.request_id)
        for skipped in accepted.skipped:
            if isinstance(skipped, OperatorError):
                # Failover saved this job, but a bad key or an empty account stays broken until someone acts.
                alerts.error("job %s went to %s because %s", job.id, accepted.provider.name, skipped)
        fresh = await self.jobs.get(job.id)
        if fresh is not None:
            await self._progress(fresh, Phase.SUBMITTED, None)
        return await self._poll_delay(fresh or job, JobState.QUEUED, None)

    async def _track(self, job: Job) -> float | None:
        provider, handle = self._provider(job)
        if provider is None or handle is None:
            alerts.error("job %s: provider %s is no longer configured", job.id, job.provider)
            return 60.0
        try:
            status = await provider.status(handle)
        except TransientError as exc:
            log.info("job %s: status call failed (%s); trying again", job.id, exc.detail)
            return max(RETRY_SOON, exc.retry_after or 0.0)
        except OperatorError as exc:
            alerts.error("job %s: %s", job.id, exc)
            return 30.0
        except ProviderError as exc:
            log.warning("job %s: status call refused: %s", job.id, exc.detail)
            return 10.0
        return await self.observe(job, status)

    async def observe(self, job: Job, status: JobStatus) -> float | None:
        """Act on one status observation (from a poll, or from a verified webhook)."""
        now = self._clock()
        if status.state is JobState.FAILED:
            reason = _sentence(status.error or "the job failed")
            return await self._fail(job, messages.REJECTED.format(reason=reason), charged=status.charged)
        if status.state is JobState.COMPLETED:
            started = job.started_at or status.started_at
            run_s = self._run_seconds(job, status, started, now)
            queue_s = (started - job.submitted_at) if started and job.submitted_at else None
            moved = await self.jobs.advance(
                job.id,
                Phase.COMPLETED,
                only_from=AT_PROVIDER,
                result_url=status.video.url if status.video else None,
                finished_at=now,
            )
            if moved and job.provider:
                await self.planner.learn(job.provider, variant(job.kind, dict(job.options)), queue_s, run_s)
            return 0.0
        phase = Phase.PROCESSING if status.state is JobState.PROCESSING else Phase.QUEUED
        started_at = job.started_at
        if phase is Phase.PROCESSING and started_at is None:
            started_at = status.started_at or now
        if phase != job.phase or status.queue_position != job.queue_position or started_at != job.started_at:
            await self.jobs.advance(
                job.id, phase, only_from=AT_PROVIDER, queue_position=status.queue_position, started_at=started_at
            )
        self._looked[job.id] = now
        await self._progress(job, phase, status.queue_position)
        return await self._poll_delay(job, status.state, started_at)

    def _run_seconds(self, job: Job, status: JobStatus, started: float | None, now: float) -> float:
        """How long the provider worked on the job, for the planner to learn.

        Not simply "now - started": that adds our own polling lateness, and a planner that learns it opens its
        window late, never looks earlier, and so never learns otherwise. The provider's finish time (same clock
        as its start) is exact; without one, a polled job finished between our last look and this one.
        """
        begin = started or job.submitted_at or now
        finished = status.finished_at
        if finished is not None and started is not None and 0 <= finished - started <= now - begin + 60:
            return finished - started
        looked = self._looked.get(job.id)
        if looked is not None and looked >= begin and not self._push_tracked(job):
            return max(0.0, (looked + now) / 2 - begin)
        return max(0.0, now - begin)

    async def _fetch(self, job: Job) -> float | None:
        provider, handle = self._provider(job)
        dest = self.videos_dir / f"{job.id}.mp4"
        try:
            url = job.result_url
            if url is None:
                if provider is None or handle is None:
                    return 60.0
                result: VideoResult = await provider.result(handle)
                url = result.url
                await self.jobs.update(job.id, result_url=url)
            await download_video(
                self.session,
                url,
                dest,
                max_bytes=self.settings.max_video_bytes,
                provider=job.provider or "?",
                allow_dir=self.settings.data_dir / "preview",
            )
            info = await asyncio.to_thread(probe_video, dest)
        except (TransientError, OSError) as exc:
            return await self._retry_or_give_up(job, f"fetch: {exc}")
        except (ResultUnusable, JobRejected, MediaError) as exc:
            log.warning("job %s: result unusable: %s", job.id, exc)
            return await self._fail(job, messages.RESULT_UNUSABLE, charged=True)
        except ProviderError as exc:
            return await self._retry_or_give_up(job, f"fetch: {exc.detail}")
        await self.jobs.advance(
            job.id, Phase.DELIVERING, only_from=frozenset({Phase.COMPLETED}), video_path=str(dest), detail=info.codec
        )
        return 0.0

    async def _deliver(self, job: Job) -> float | None:
        reply = self.reply_for(job)
        if reply is None:
            log.warning("job %s: no front-end for %s is running; will retry", job.id, job.reply.get("platform"))
            return 60.0
        path = Path(job.video_path or self.videos_dir / f"{job.id}.mp4")
        try:
            info = await asyncio.to_thread(probe_video, path)
            thumb = await asyncio.to_thread(make_thumbnail, path, path.with_suffix(".jpg"))
        except (MediaError, OSError):
            # The file vanished or rotted on disk: fetch it again from the provider.
            await self.jobs.advance(job.id, Phase.COMPLETED, only_from=frozenset({Phase.DELIVERING}))
            return await self._retry_or_give_up(job, "video file missing")
        balance = await self.ledger.balance(job.user_id)
        text = messages.DONE.format(cost=job.cost, s=messages.plural(job.cost), balance=balance)
        delivery = Delivery(path, info.width, info.height, info.duration_s, info.size_bytes, thumb)
        try:
            await reply.deliver(job, delivery, text)
        except DeliveryFailed as exc:
            log.warning("job %s: delivery refused: %s", job.id, exc)
            return await self._fail(job, messages.DELIVERY_FAILED, charged=True)
        except Exception as exc:
            return await self._retry_or_give_up(job, f"deliver: {type(exc).__name__}: {exc}")
        await self.ledger.capture(job.id)
        await self.jobs.advance(job.id, Phase.DELIVERED, only_from=frozenset({Phase.DELIVERING}))
        await self.jobs.update(job.id, notified_at=self._clock())
        await self._done(job)
        return None

    async def _expire(self, job: Job) -> float | None:
        provider, handle = self._provider(job)
        if provider is not None and handle is not None:
            try:
                await provider.cancel(handle)
            except Exception:  # cancel is best effort; the refund below does not depend on it
                log.exception("job %s: cancel failed", job.id)
        await self.jobs.advance(job.id, Phase.EXPIRED, detail="deadline passed")
        await self.ledger.release(job.id, reason="deadline passed")
        return await self._notify_final(job, messages.EXPIRED)

    async def _fail(self, job: Job, text: str, *, charged: bool) -> float | None:
        """Release the member's credits and mark the job failed; `charged` says if the provider may bill us."""
        await self.jobs.advance(job.id, Phase.FAILED, detail=text[:200], error=text, provider_charged=charged)
        await self.ledger.release(job.id, reason="job failed")
        return await self._notify_final(job, text)

    async def _notify_final(self, job: Job, text: str | None = None) -> float | None:
        fresh = await self.jobs.get(job.id) or job
        if fresh.notified_at is not None:
            self._forget(job.id)
            return None
        reply = self.reply_for(fresh)
        if reply is None:
            return 60.0
        if text is None:
            text = fresh.error or (messages.EXPIRED if fresh.phase is Phase.EXPIRED else messages.INTERNAL)
        hold = await self.ledger.get_hold(job.id)
        if hold is not None and hold.state == "released" and hold.amount:
            # Only a hold that was taken and given back is a refund worth announcing.
            text += messages.REFUND_SUFFIX.format(cost=hold.amount, s=messages.plural(hold.amount))
        try:
            await reply.fail(fresh, text)
        except Exception as exc:
            log.warning("job %s: could not tell the member: %s", job.id, exc)
            if self._attempts.get(job.id, 0) < MAX_FINISH_ATTEMPTS:
                self._attempts[job.id] = self._attempts.get(job.id, 0) + 1
                return 30.0
        await self.jobs.update(job.id, notified_at=self._clock())
        await self._done(fresh)
        return None

    # -- helpers --------------------------------------------------------------------------------

    async def _retry_or_give_up(self, job: Job, why: str) -> float | None:
        count = self._attempts.get(job.id, 0) + 1
        self._attempts[job.id] = count
        log.warning("job %s: %s (attempt %d)", job.id, why, count)
        if count >= MAX_FINISH_ATTEMPTS:
            return await self._fail(job, messages.RESULT_UNUSABLE, charged=True)
        return min(60.0, RETRY_SOON * 2.0**count)

    async def _progress(self, job: Job, phase: Phase, queue_position: int | None) -> None:
        key = (phase, queue_position)
        if self._last_progress.get(job.id) == key:
            return
        self._last_progress[job.id] = key
        reply = self.reply_for(job)
        if reply is None:
            return
        update = Progress(phase, queue_position, self._clock() - job.created_at, job.provider)
        try:
            await reply.progress(job, update)
        except Exception as exc:  # progress is cosmetic; never let it stop a job
            log.info("job %s: progress update failed: %s", job.id, exc)

    def _push_tracked(self, job: Job) -> bool:
        """True when the provider was given a callback URL for this job (so polls are only a safety net)."""
        provider = self.router.get(job.provider or "")
        return bool(job.webhook_token and provider and provider.capabilities.push and self._push_ok(job.provider))

    async def _poll_delay(self, job: Job, state: JobState, started_at: float | None) -> float:
        push = self._push_tracked(job)
        return await self.planner.next_delay(
            provider=job.provider or "?",
            key=variant(job.kind, dict(job.options)),
            state=state,
            now=self._clock(),
            submitted_at=job.submitted_at or self._clock(),
            started_at=started_at,
            push=push,
        )

    def _push_ok(self, provider: str | None) -> bool:
        base = self.settings.public_base_url or ""
        return provider != "pixazo" or base.startswith("https://")

    def _provider(self, job: Job) -> tuple[Any, JobHandle | None]:
        provider = self.router.get(job.provider or "")
        handle = JobHandle.from_json(job.handle) if job.handle else None
        return provider, handle

    async def _spec(self, job: Job) -> JobSpec:
        image = None
        if job.image_path:
            data = await asyncio.to_thread(Path(job.image_path).read_bytes)
            public = job.image_url or self._hosted_url(job)
            image = ImageInput(data=data, mime=job.image_mime or "image/png", public_url=public)
        opts = job.options
        steps = opts.get("steps")
        return JobSpec(
            kind=JobKind(job.kind),
            prompt=job.prompt,
            image=image,
            resolution=str(opts.get("resolution") or "512P"),
            duration_s=int(str(opts.get("duration_s") or 5)),
            steps=int(str(steps)) if steps is not None else None,
            acceleration=_opt(opts.get("acceleration")),
            aspect_ratio=_opt(opts.get("aspect_ratio")),
            webhook_url=self._webhook_url(job),
        )

    def _hosted_url(self, job: Job) -> str | None:
        if not (self.settings.public_base_url and job.webhook_token):
            return None
        return f"{self.settings.public_base_url.rstrip('/')}/media/{job.webhook_token}"

    def _webhook_url(self, job: Job) -> str | None:
        if not (self.settings.public_base_url and job.webhook_token):
            return None
        return f"{self.settings.public_base_url.rstrip('/')}/hooks/{job.webhook_token}"

    async def _done(self, job: Job) -> None:
        """A settled, announced job: drop what we held for it, the member's input image included."""
        self._forget(job.id)
        if job.image_path:
            # Nothing reads it again (a job is never resubmitted), and a member's picture is not ours to keep.
            await asyncio.to_thread(Path(job.image_path).unlink, missing_ok=True)

    def _forget(self, job_id: str) -> None:
        self._attempts.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self._looked.pop(job_id, None)


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _sentence(text: str) -> str:
    """A provider's error text, trimmed to something fit to show a member."""
    text = " ".join(text.split())[:300]
    return text.rstrip(".") or "no reason given"
