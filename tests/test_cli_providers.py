"""`python -m bot animate|video` as a real subprocess against the provider fakes, configured only through the
environment (the base-URL settings), from an empty directory so no .env is read."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from tests.fakes.clips import png_bytes
from tests.fakes.fal_jobs import Plan
from tests.fakes.fal_schema import I2V_MODEL, T2V_MODEL
from tests.fakes.fal_server import FakeFal
from tests.fakes.wavespeed_server import FakeWaveSpeed

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 60.0


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


async def cli(cwd: Path, env: Mapping[str, str], *args: str) -> Run:
    """Run `python -m bot ARGS` in `cwd` with exactly `env` (plus PATH), serving the fakes meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(cwd), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Run(proc.returncode or 0, out.decode(), err.decode())


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "DATA_DIR": str(tmp_path / "data"),
        "WEB_PORT": "0",
    }


def fal_env(tmp_path: Path, fake: FakeFal, **extra: str) -> dict[str, str]:
    return {
        **base_env(tmp_path),
        "PROVIDERS": "fal",
        "FAL_KEY": fake.api_key,
        "FAL_BASE_URL": fake.base_url,
        "FAL_JWKS_URL": fake.jwks_url,
        **extra,
    }


def probe(path: Path) -> tuple[str, float]:
    """Codec and duration of an MP4, read with PyAV; fails if it has no video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert frames > 0
        return stream.codec_context.name, float(container.duration or 0) / 1e6


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "cat.png").write_bytes(png_bytes())
    return work


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal.running(schedule=lambda sub: Plan(0.1, 0.3)) as fake:
        yield fake


async def test_animate_writes_a_playable_mp4_from_fal(tmp_path: Path, workdir: Path, fal: FakeFal) -> None:
    out = workdir / "out" / "clip.mp4"
    run = await cli(workdir, fal_env(tmp_path, fal), "animate", "cat.png", "the cat blinks", "--out", str(out))
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert probe(out)[0] == "h264"
    [submit] = fal.calls("submit")
    assert submit.path == f"/{I2V_MODEL}"
    assert submit.headers["Authorization"] == f"Key {fal.api_key}"
    assert submit.json["prompt"] == "the cat blinks" and submit.json["resolution"] == "512P"
    assert submit.json["image_url"].startswith("data:image/png;base64,")  # no public URL: sent inline
    assert "fal_webhook" not in submit.query  # no PUBLIC_BASE_URL: polled
    assert len(fal.calls("result")) == 1
    assert fal.api_key not in run.stderr + run.stdout


async def test_video_writes_a_playable_mp4_from_fal(tmp_path: Path, workdir: Path, fal: FakeFal) -> None:
    out = workdir / "dog.mp4"
    run = await cli(
        workdir, fal_env(tmp_path, fal), "video", "a dog in a red hat", "--aspect-ratio", "1:1", "--out", str(out)
    )
    assert run.code == 0, run.stderr
    assert probe(out)[0] == "h264"
    [submit] = fal.calls("submit")
    assert submit.path == f"/{T2V_MODEL}"
    assert submit.json == {"prompt": "a dog in a red hat", "aspect_ratio": "1:1", "duration": "5s"}


async def test_animate_through_wavespeed(tmp_path: Path, workdir: Path) -> None:
    async with FakeWaveSpeed.running(api_key="ws-cli-key", schedule=lambda i: (0.1, 0.3)) as fake:
        env = {
            **base_env(tmp_path),
            "PROVIDERS": "wavespeed",
            "WAVESPEED_API_KEY": fake.api_key,
            "WAVESPEED_BASE_URL": fake.base_url,
        }
        out = workdir / "ws.mp4"
        run = await cli(
            workdir, env, "animate", "cat.png", "the cat blinks", "--resolution", "1024p", "--out", str(out)
        )
    assert run.code == 0, run.stderr
    assert probe(out)[0] == "h264"
    [submit] = fake.seen("submit")
    assert submit.headers["Authorization"] == "Bearer ws-cli-key"
    assert submit.json["resolution"] == "1024p" and submit.json["duration"] == 5  # WaveSpeed's spelling
    [upload] = fake.uploads.values()
    assert upload.data == png_bytes()  # the local file went through WaveSpeed's upload API


async def test_a_failing_job_exits_non_zero_with_one_clear_line(tmp_path: Path, workdir: Path, fal: FakeFal) -> None:
    fal.schedule = lambda sub: Plan(0.1, 0.2, error="NSFW content detected")
    out = workdir / "never.mp4"
    run = await cli(workdir, fal_env(tmp_path, fal), "animate", "cat.png", "the cat blinks", "--out", str(out))
    assert run.code == 1
    assert run.last_error_line == (
        "The video service could not make this clip: NSFW content detected. Your 4 credits were returned."
    )
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not out.exists()
    balance = await cli(workdir, fal_env(tmp_path, fal), "credits", "balance", "local")
    assert balance.stdout.strip() == "20"  # refunded


async def test_a_bad_key_exits_non_zero_saying_it_is_not_the_users_fault(
    tmp_path: Path, workdir: Path, fal: FakeFal
) -> None:
    env = fal_env(tmp_path, fal, FAL_KEY="fal-wrong-key")
    run = await cli(workdir, env, "animate", "cat.png", "the cat blinks", "--out", str(workdir / "x.mp4"))
    assert run.code == 1
    assert run.last_error_line.startswith("The video service is unavailable right now (not your fault)")
    assert "Traceback" not in run.stderr
    assert "fal-wrong-key" not in run.stderr
    log = (tmp_path / "data" / "animabot.log").read_text()
    assert "animabot.alerts" in log and "401" in log  # the operator can see what went wrong...
    assert "fal-wrong-key" not in log  # ...without the key ever being written down


async def test_a_missing_key_is_a_one_line_config_error(tmp_path: Path, workdir: Path) -> None:
    run = await cli(workdir, {**base_env(tmp_path), "PROVIDERS": "fal"}, "video", "a dog")
    assert run.code == 2
    assert run.stderr.strip() == "config: PROVIDERS lists fal but FAL_KEY is not set."
