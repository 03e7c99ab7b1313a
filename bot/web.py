"""The bot's own HTTP server: provider webhooks, input images for providers that need a URL, health."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from aiohttp import web

from bot.app import App
from bot.budget import start_of_utc_day
from bot.errors import UserError
from providers.base import JobHandle
from providers.errors import ProviderError
from storage.jobs import FINAL, Phase

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 1024 * 1024
APP_KEY = web.AppKey("animabot", App)


def make_web_app(app: App) -> web.Application:
    web_app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    web_app[APP_KEY] = app
    web_app.router.add_get("/healthz", health)
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_post("/hooks/{token}", webhook)
    web_app.router.add_get("/media/{token}", media)
    return web_app


async def health(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    return web.json_response({"ok": True, "jobs_in_flight": app.tracker.pending(), "providers": app.router.names()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: jobs by phase, work in flight, credits held, today's provider spend."""
    app = request.app[APP_KEY]
    counts = await app.jobs.phase_counts()
    spent = await app.jobs.spent_usd_micros_since(start_of_utc_day(time.time()))
    lines = ["# HELP animabot_jobs Jobs by phase.", "# TYPE animabot_jobs gauge"]
    lines += [f'animabot_jobs{{phase="{phase.value}"}} {counts.get(phase.value, 0)}' for phase in Phase]
    lines += [
        "# HELP animabot_jobs_tracked Jobs scheduled or being stepped by the tracker.",
        "# TYPE animabot_jobs_tracked gauge",
        f"animabot_jobs_tracked {app.tracker.pending()}",
        "# HELP animabot_credits_held Credits held for jobs in flight.",
        "# TYPE animabot_credits_held gauge",
        f"animabot_credits_held {await app.ledger.held_total()}",
        "# HELP animabot_spend_usd_today What providers may bill for jobs submitted today (UTC).",
        "# TYPE animabot_spend_usd_today gauge",
        f"animabot_spend_usd_today {spent / 1_000_000:.6f}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def webhook(request: web.Request) -> web.Response:
    """A provider says a job changed. Verify it, then let the tracker look at the job right away.

    Every answer is quick and carries no detail: a forger learns nothing, and duplicates or late
    callbacks for finished jobs are acknowledged and ignored.
    """
    app = request.app[APP_KEY]
    token = request.match_info["token"]
    job = await app.jobs.by_webhook_token(token)
    if job is None or job.handle is None or job.provider is None:
        return web.Response(status=404)
    provider = app.router.get(job.provider)
    if provider is None:
        return web.Response(status=404)
    body = await request.read()
    try:
        event = await provider.verify_webhook(request.headers, body)
    except ProviderError as exc:
        # We cannot check signatures just now (the key fetch failed). The URL's token is still right, so
        # treat it as an unsigned hint, as for Pixazo: one status call decides. 503 asks for a redelivery.
        log.warning("webhook for job %s could not be verified yet: %s", job.id, exc.detail)
        if job.phase not in FINAL:
            app.tracker.poke(job.id)
        return web.Response(status=503)
    if event is None:
        log.warning("webhook for job %s refused: bad signature, stale, or malformed", job.id)
        return web.Response(status=401)
    if event.request_id != JobHandle.from_json(job.handle).request_id:
        return web.Response(status=400)
    if job.phase not in FINAL:
        # Even a signed callback only wakes the tracker: one status call confirms it (and is the only
        # way to trust an unsigned Pixazo callback).
        app.tracker.poke(job.id)
    return web.Response(status=200)


async def media(request: web.Request) -> web.StreamResponse:
    """The input image of a job in flight, under its unguessable token; gone once the job has been submitted
    long enough ago or has finished."""
    app = request.app[APP_KEY]
    job = await app.jobs.by_webhook_token(request.match_info["token"])
    if job is None or job.image_path is None or job.phase in FINAL:
        return web.Response(status=404)
    path = Path(job.image_path)
    if not await asyncio.to_thread(path.is_file):
        return web.Response(status=404)
    return web.FileResponse(path, headers={"Content-Type": job.image_mime or "application/octet-stream"})


async def start_web(app: App) -> web.AppRunner:
    """Serve on WEB_HOST:WEB_PORT (port 0 picks a free one: read it back with `bound_port`)."""
    runner = web.AppRunner(make_web_app(app), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, app.settings.web_host, app.settings.web_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"{app.settings.web_host}:{app.settings.web_port}"
        why = os.strerror(exc.errno).lower() if exc.errno else "cannot bind"
        raise UserError(f"The web server cannot listen on {where} ({why}); set WEB_HOST or WEB_PORT.") from exc
    log.info("web server listening on %s:%s", app.settings.web_host, bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the server actually listens on (differs from WEB_PORT when that is 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the web server is not listening on a TCP port")
