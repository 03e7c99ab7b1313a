"""The command line: `python -m bot` (or `animabot`) run | shell | animate | video | credits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from bot import messages
from bot.app import App
from bot.config import Settings, format_validation_error
from bot.errors import UserError
from bot.media import MediaError, read_image_source
from bot.ports import AnimateRequest, Requester
from bot.shell.commands import parse_duration
from bot.shell.console import PLATFORM, local_user, run_console
from bot.shell.replies import ConsoleReply, FileReply
from providers.base import JobKind
from storage.ledger import EntryKind, InsufficientCredits

log = logging.getLogger("animabot")
EXIT_FAILED = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="animabot", description="Turn a still image and a prompt into a 5-second video.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("run", help="start every configured front-end and the web server (shell if no tokens)")
    shell = sub.add_parser("shell", help="chat with the bot in this terminal")
    shell.add_argument("--user", default="local")

    animate = sub.add_parser("animate", help="animate one image and write the MP4")
    animate.add_argument("image", help="a local path or an http(s) URL of an image")
    animate.add_argument("prompt")
    animate.add_argument("--provider", choices=["fal", "pixazo", "wavespeed", "preview"])
    animate.add_argument("--resolution", choices=["512P", "1024P"], default="512P", type=str.upper)
    animate.add_argument("--steps", type=int)
    animate.add_argument("--acceleration", choices=["none", "regular", "fast", "ultra_fast"])
    animate.add_argument("--out", type=Path)
    animate.add_argument("--user", default="local")

    video = sub.add_parser("video", help="make a video from a prompt alone and write the MP4")
    video.add_argument("prompt")
    video.add_argument("--duration", choices=["5s", "10s"], default="5s")
    video.add_argument("--aspect-ratio", choices=["3:2", "1:1", "2:3"], default="3:2")
    video.add_argument("--provider", choices=["fal", "preview"])
    video.add_argument("--out", type=Path)
    video.add_argument("--user", default="local")

    credits = sub.add_parser("credits", help="look at or change a member's credits (operator)")
    csub = credits.add_subparsers(dest="action", required=True, parser_class=Parser)
    csub.add_parser("balance").add_argument("user")
    grant = csub.add_parser("grant")
    grant.add_argument("user")
    grant.add_argument("amount", type=int)
    grant.add_argument("--reason", default="granted by the operator")
    history = csub.add_parser("history")
    history.add_argument("user")
    history.add_argument("--limit", type=int, default=20)
    return parser


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for line in format_validation_error(exc):
            print(f"config: {line}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    problems = settings.problems()
    for line in problems:
        print(f"config: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(EXIT_USAGE)
    return settings


def setup_logging(settings: Settings, command: str) -> None:
    """Where the terminal is the member's chat or a one-shot command, only warnings reach it; the full log
    (at LOG_LEVEL) goes to DATA_DIR/animabot.log. A server run logs everything to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    interactive = command != "run" or not (settings.discord_token or settings.telegram_bot_token)
    if interactive:
        console.setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
        if command != "credits":
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(settings.data_dir / "animabot.log", encoding="utf-8")
            to_file.setFormatter(fmt)
            root.addHandler(to_file)
    root.addHandler(console)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    setup_logging(settings, args.command)
    if args.command != "credits":
        for note in settings.notes():
            print(note, file=sys.stderr)
    try:
        return asyncio.run(dispatch(args, settings))
    except KeyboardInterrupt:
        print("Interrupted; unfinished jobs resume on the next start.", file=sys.stderr)
        return 130


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # SIGTERM (systemd, docker stop) stops like Ctrl-C: calls in flight land, the rest resumes next start.
    main_task = asyncio.current_task()
    stopped = False

    def on_term() -> None:
        nonlocal stopped
        stopped = True
        if main_task is not None:
            main_task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    app = await App.build(settings)
    try:
        match args.command:
            case "credits":
                return await credits_command(app, args)
            case "animate" | "video":
                return await one_job(app, args)
            case _:
                return await run_bot(app, args)
    except asyncio.CancelledError:
        if not stopped:
            raise
        print("Stopped; unfinished jobs resume on the next start.", file=sys.stderr)
        return 0
    finally:
        await app.close()


async def run_bot(app: App, args: argparse.Namespace) -> int:
    settings = app.settings
    for name, token in (("Discord", settings.discord_token), ("Telegram", settings.telegram_bot_token)):
        if token:
            print(f"{name} token set, but the {name} front-end is not part of this build yet.", file=sys.stderr)
            return EXIT_USAGE
    from bot.web import start_web

    app.add_replies(PLATFORM, ConsoleReply)
    app.add_replies("cli", lambda target: FileReply(target, {}))
    try:
        runner = await start_web(app) if args.command == "run" else None
    except UserError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_USAGE
    try:
        await app.start()
        await run_console(app.service, user=getattr(args, "user", "local"))
    finally:
        if runner is not None:
            await runner.cleanup()
    return 0


async def one_job(app: App, args: argparse.Namespace) -> int:
    waiters: dict[str, asyncio.Future[tuple[bool, str]]] = {}
    app.add_replies("cli", lambda target: FileReply(target, waiters))
    app.add_replies(PLATFORM, ConsoleReply)
    runner = None
    if app.settings.public_base_url:
        from bot.web import start_web

        runner = await start_web(app)
    try:
        await app.start()
        try:
            req = await build_request(app, args)
            submitted = await app.service.animate(req)
        except UserError as exc:
            print(exc.message, file=sys.stderr)
            return EXIT_FAILED
        except MediaError as exc:
            print(exc.user_message, file=sys.stderr)
            return EXIT_FAILED
        job = submitted.job
        if submitted.joined:
            print(messages.DUPLICATE.format(job_id=job.id), file=sys.stderr)
        waiter = waiters.setdefault(job.id, asyncio.get_running_loop().create_future())
        await app.tracker.wait_finished(job.id)  # delivered and captured, or refunded: settled either way
        ok, text = await waiter
        print(text, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else EXIT_FAILED
    finally:
        if runner is not None:
            await runner.cleanup()


async def build_request(app: App, args: argparse.Namespace) -> AnimateRequest:
    user = local_user(args.user)
    out = args.out or Path(f"{'animation' if args.command == 'animate' else 'video'}.mp4")
    target = {"platform": "cli", "out": str(out.resolve())}
    requester = Requester(user_id=user, display=args.user)
    if args.command == "video":
        return AnimateRequest(
            requester=requester,
            kind=JobKind.TEXT_TO_VIDEO,
            prompt=args.prompt,
            reply_target=target,
            duration_s=parse_duration(args.duration),
            aspect_ratio=args.aspect_ratio,
            provider=args.provider,
        )
    settings = app.settings
    image = await read_image_source(
        args.image, session=app.session, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )
    public = args.image if args.image.startswith(("https://", "http://")) else None
    return AnimateRequest(
        requester=requester,
        kind=JobKind.IMAGE_TO_VIDEO,
        prompt=args.prompt,
        reply_target=target,
        image_bytes=image.data,
        image_public_url=public,
        resolution=args.resolution,
        steps=args.steps,
        acceleration=args.acceleration,
        provider=args.provider,
    )


async def credits_command(app: App, args: argparse.Namespace) -> int:
    user = local_user(args.user)
    if args.action == "balance":
        print(await app.service.balance(user))
        return 0
    if args.action == "grant":
        import secrets

        kind = EntryKind.GRANT if args.amount >= 0 else EntryKind.ADJUSTMENT
        try:
            await app.ledger.credit(
                user,
                args.amount,
                kind=kind,
                actor="operator",
                reason=args.reason,
                idem_key=f"cli:{secrets.token_hex(8)}",
            )
        except InsufficientCredits as exc:
            print(f"{user} has only {exc.balance} credits; a balance cannot go below zero.", file=sys.stderr)
            return EXIT_FAILED
        print(await app.ledger.balance(user))
        return 0
    for entry in reversed(await app.ledger.history(user, args.limit)):
        job = f" job {entry.job_id}" if entry.job_id else ""
        print(f"{entry.id:>6}  {entry.kind.value:<10} {entry.amount:+6d}  {entry.actor:<12} {entry.reason}{job}")
    return 0
