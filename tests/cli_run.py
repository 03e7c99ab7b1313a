"""Run the real command line in a subprocess, in a scratch folder so no developer .env leaks in."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREVIEW_NOTE = "No provider key set"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def err_lines(self) -> list[str]:
        """stderr without the start-up note about the preview provider."""
        return [line for line in self.err.splitlines() if line.strip() and not line.startswith(PREVIEW_NOTE)]


def bot_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_KEY", "_TOKEN")) and k != "PROVIDERS"}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": f"sqlite:///{workdir / 'bot.db'}",
            "DATA_DIR": str(workdir / "data"),
            "WEB_PORT": "0",
            "PREVIEW_QUEUE_SECONDS": "0.2",
            "STARTING_CREDITS": "20",
        }
    )
    env.update(extra or {})
    return env


def run_cli(
    workdir: Path, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 90
) -> Result:
    proc = subprocess.run(  # noqa: S603 - our own interpreter running our own module
        [sys.executable, "-m", "bot", *args],
        cwd=workdir,
        env=bot_env(workdir, env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
