"""The shell front-end: type commands as a chat member would, see progress, get the MP4's path."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import TextIO

from bot import messages
from bot.errors import UserError
from bot.media import MediaError, read_image_source
from bot.ports import AnimateRequest, Requester
from bot.service import AnimationService
from bot.shell.commands import Command, parse, parse_duration, parse_steps
from providers.base import JobKind

log = logging.getLogger(__name__)

PLATFORM = "shell"


def local_user(name: str) -> str:
    """Members at this machine: the shell and the CLI share ids so `credits balance local` matches."""
    return name if ":" in name else f"local:{name}"


class Console:
    def __init__(self, service: AnimationService, *, user: str = "local", out: TextIO | None = None) -> None:
        self.service = service
        self.requester = Requester(user_id=local_user(user), display=user)
        self.out = out or sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def handle(self, line: str) -> bool:
        """Run one typed line; False when the user asked to quit."""
        try:
            command = parse(line)
            if command is None:
                return True
            if command.name in ("quit", "exit"):
                return False
            await self._dispatch(command)
        except UserError as exc:
            self.say(exc.message)
        except MediaError as exc:
            self.say(exc.user_message)
        return True

    async def _dispatch(self, command: Command) -> None:
        match command.name:
            case "help" | "start":
                self.say(messages.HELP)
            case "balance":
                self.say(f"You have {await self.service.balance(self.requester.user_id)} credits.")
            case "history":
                for entry in await self.service.history(self.requester.user_id):
                    self.say(f"{entry.kind.value:>10} {entry.amount:+d}  {entry.reason}")
            case "animate":
                await self._animate(command)
            case "video":
                await self._video(command)
            case _:
                self.say(f"Unknown command /{command.name}; type /help to see what I can do.")

    async def _animate(self, command: Command) -> None:
        if not command.args:
            raise UserError("Usage: /animate PATH PROMPT — for example /animate assets/sample.png the sun rises")
        source, prompt = command.args[0], " ".join(command.args[1:])
        if not prompt.strip():
            raise UserError(messages.EMPTY_PROMPT)
        settings = self.service.settings
        image = await read_image_source(
            source, session=None, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        opts = command.options
        await self._submit(
            AnimateRequest(
                requester=self.requester,
                kind=JobKind.IMAGE_TO_VIDEO,
                prompt=prompt,
                reply_target={"platform": PLATFORM},
                image_bytes=image.data,
                resolution=opts.get("resolution", "512P"),
                steps=parse_steps(opts["steps"]) if "steps" in opts else None,
                acceleration=opts.get("acceleration"),
                provider=opts.get("provider"),
            )
        )

    async def _video(self, command: Command) -> None:
        opts = command.options
        await self._submit(
            AnimateRequest(
                requester=self.requester,
                kind=JobKind.TEXT_TO_VIDEO,
                prompt=" ".join(command.args),
                reply_target={"platform": PLATFORM},
                duration_s=parse_duration(opts.get("duration", "5s")),
                aspect_ratio=opts.get("aspect-ratio"),
                provider=opts.get("provider"),
            )
        )

    async def _submit(self, req: AnimateRequest) -> None:
        result = await self.service.animate(req)
        if result.joined:
            self.say(messages.DUPLICATE.format(job_id=result.job.id))
        else:
            cost = result.job.cost
            self.say(
                messages.ACCEPTED.format(
                    job_id=result.job.id, cost=cost, s=messages.plural(cost), balance=result.balance
                )
            )


async def run_console(service: AnimationService, *, user: str = "local") -> None:
    """Read commands until /quit (leave at once) or end of input (wait for jobs still in flight)."""
    console = Console(service, user=user)
    console.say(f"animabot shell · you are {user} · try: /animate {Path('assets/sample.png')} the sun rises · /help")
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        # A daemon thread, so a blocked read never keeps the process alive after /quit. A terminal that
        # hangs up makes reads fail (EIO) rather than end: that is the end of input too.
        try:
            for raw in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, raw)
        except (OSError, ValueError) as exc:
            log.info("stdin closed: %s", exc)
        finally:
            loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while True:
        line = await lines.get()
        if line is None:
            break
        if not await console.handle(line):
            if service.tracker.pending():
                console.say(f"{service.tracker.pending()} job(s) still in flight will finish on the next start.")
            return
    if service.tracker.pending():
        console.say(f"Waiting for {service.tracker.pending()} job(s) to finish…")
        await service.tracker.wait_idle()
