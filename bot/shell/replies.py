"""Reply port implementations that write to the terminal."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from bot import messages
from bot.ports import Delivery, Progress
from storage.jobs import Job, Phase


def progress_text(update: Progress) -> str:
    when = messages.elapsed(update.elapsed_s)
    if update.phase in (Phase.SUBMITTED, Phase.QUEUED, Phase.HELD, Phase.RECEIVED):
        pos = f" (position {update.queue_position + 1})" if update.queue_position is not None else ""
        return messages.QUEUED.format(pos=pos, elapsed=when)
    if update.phase is Phase.COMPLETED:
        return messages.FETCHING.format(elapsed=when)
    return messages.PROCESSING.format(elapsed=when)


class ConsoleReply:
    """Prints progress and results for the shell; the video stays where the bot saved it."""

    def __init__(self, target: Mapping[str, Any], out: TextIO | None = None) -> None:
        self.target = dict(target)
        self.out = out or sys.stdout

    def _say(self, job: Job, text: str) -> None:
        print(f"[job {job.id}] {text}", file=self.out, flush=True)

    async def progress(self, job: Job, update: Progress) -> None:
        self._say(job, progress_text(update))

    async def deliver(self, job: Job, video: Delivery, text: str) -> None:
        self._say(job, f"{text}\n  video: {video.path} ({video.width}x{video.height}, {video.duration_s:.1f}s)")

    async def fail(self, job: Job, text: str) -> None:
        self._say(job, text)


class FileReply:
    """For `animate`/`video`: a live progress line on stderr, the MP4 copied to --out, outcome recorded."""

    def __init__(self, target: Mapping[str, Any], waiters: dict[str, asyncio.Future[tuple[bool, str]]]) -> None:
        self.target = dict(target)
        self.waiters = waiters
        self.tty = sys.stderr.isatty()

    async def progress(self, job: Job, update: Progress) -> None:
        pos = f" · position {update.queue_position + 1}" if update.queue_position is not None else ""
        line = f"{update.phase.value}{pos} · {messages.elapsed(update.elapsed_s)} · {update.provider or ''}".rstrip(
            " ·"
        )
        if self.tty:
            print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    async def deliver(self, job: Job, video: Delivery, text: str) -> None:
        out = Path(str(self.target.get("out") or video.path))
        await asyncio.to_thread(_copy, video.path, out)
        self._finish(job, True, str(out))

    async def fail(self, job: Job, text: str) -> None:
        self._finish(job, False, text)

    def _finish(self, job: Job, ok: bool, text: str) -> None:
        if self.tty:
            print(file=sys.stderr)
        waiter = self.waiters.get(job.id)
        if waiter is not None and not waiter.done():
            waiter.set_result((ok, text))
        elif ok:
            print(f"job {job.id} (from an earlier run) finished: {text}", file=sys.stderr)
        else:
            print(f"job {job.id} (from an earlier run): {text}", file=sys.stderr)


def _copy(src: Path, dest: Path) -> None:
    if dest.resolve() == src.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
