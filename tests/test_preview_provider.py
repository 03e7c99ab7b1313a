"""PreviewProvider end to end: simulated queue on an injected clock, real renders probed with PyAV."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from PIL import Image

from bot.media import probe_video
from providers.base import ImageInput, JobHandle, JobKind, JobSpec, JobState, Provider
from providers.errors import JobRejected, ResultUnusable
from providers.preview import PreviewProvider

QUEUE = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def photo(width: int, height: int) -> bytes:
    ramp = Image.linear_gradient("L").resize((width, height))
    img = Image.merge("RGB", (ramp, Image.effect_noise((width, height), 40), ramp.rotate(180)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def i2v(resolution: str = "512P", width: int = 900, height: int = 600) -> JobSpec:
    image = ImageInput(data=photo(width, height), mime="image/jpeg")
    return JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt="waves roll in", image=image, resolution=resolution)


def path_of(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file"
    return Path(url2pathname(parts.path))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(tmp_path: Path, clock: Clock) -> PreviewProvider:
    return PreviewProvider(tmp_path, queue_seconds=QUEUE, clock=clock)


def test_is_a_provider(provider: PreviewProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "preview" and provider.capabilities.push is False
    caps = provider.capabilities
    assert caps.supports(i2v("512P")) and caps.supports(i2v("1024P"))
    assert caps.price_usd_micros(i2v("1024P")) == 0
    t2v = JobSpec(kind=JobKind.TEXT_TO_VIDEO, prompt="x", duration_s=10, aspect_ratio="2:3")
    assert caps.supports(t2v) and caps.price_usd_micros(t2v) == 0
    assert not caps.supports(JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt="x", resolution="512P", duration_s=10))


async def test_lifecycle_queued_processing_completed(provider: PreviewProvider, clock: Clock, tmp_path: Path) -> None:
    handle = await provider.submit(i2v("512P"))
    assert handle.provider == "preview"
    positions = []
    for elapsed in (0.0, 0.4, 0.8):
        clock.now = float(handle.extra["created"]) + elapsed
        status = await provider.status(handle)
        assert status.state is JobState.QUEUED
        positions.append(status.queue_position)
    assert positions == sorted(positions, reverse=True) and positions[0] > positions[-1] >= 0
    clock.now = float(handle.extra["created"]) + 1.2
    status = await provider.status(handle)
    assert status.state is JobState.PROCESSING and status.video is None
    with pytest.raises(ResultUnusable):
        await provider.result(handle)

    clock.now = float(handle.extra["created"]) + QUEUE + 0.01
    done = await provider.status(handle)
    assert done.state is JobState.COMPLETED and done.video is not None
    video = path_of(done.video.url)
    assert video.parent == tmp_path.resolve() and done.video.size == video.stat().st_size
    info = probe_video(video)
    assert info.codec == "h264"
    assert abs(info.duration_s - 5.0) < 0.5 and info.frames == 120
    assert (info.width, info.height) == (512, 342)  # 900×600 scaled to a 512 long side, rounded to even
    assert await provider.result(handle) == done.video
    with video.open("rb") as fh:
        head = fh.read(64)
    assert head[4:8] == b"ftyp" and b"moov" in video.read_bytes()[:4096]  # faststart: index before data

    # Idempotent: asking again does not render again.
    stamp = video.stat().st_mtime_ns
    again = await provider.status(handle)
    assert again.video == done.video and video.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


async def test_1024p_portrait_keeps_aspect_with_even_dims(provider: PreviewProvider, clock: Clock) -> None:
    handle = await provider.submit(i2v("1024P", width=601, height=901))
    clock.now += QUEUE
    started = time.perf_counter()
    status = await provider.status(handle)
    elapsed = time.perf_counter() - started
    assert status.state is JobState.COMPLETED and status.video is not None
    info = probe_video(path_of(status.video.url))
    assert info.height == 1024 and info.width % 2 == 0 and info.width == 684  # 683.06, nearest even
    assert abs(info.duration_s - 5.0) < 0.5
    assert elapsed < 30  # about 2.5 s on two cores; generous for a busy CI box


@pytest.mark.parametrize(
    ("aspect", "duration", "size"), [("3:2", 5, (768, 512)), ("1:1", 5, (512, 512)), ("2:3", 10, (512, 768))]
)
async def test_text_to_video_sizes_and_durations(
    provider: PreviewProvider, clock: Clock, aspect: str, duration: int, size: tuple[int, int]
) -> None:
    spec = JobSpec(
        kind=JobKind.TEXT_TO_VIDEO,
        prompt="A lighthouse on a cliff at night, beams sweeping through fog " * 4,
        duration_s=duration,
        aspect_ratio=aspect,
    )
    handle = await provider.submit(spec)
    clock.now += QUEUE
    status = await provider.status(handle)
    assert status.state is JobState.COMPLETED and status.video is not None
    info = probe_video(path_of(status.video.url))
    assert (info.codec, (info.width, info.height)) == ("h264", size)
    assert abs(info.duration_s - duration) < 0.5 and info.frames == 24 * duration


async def test_status_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    first = PreviewProvider(tmp_path, queue_seconds=QUEUE, clock=clock)
    stored = (await first.submit(i2v("512P"))).to_json()  # what storage keeps
    del first

    clock.now += 1.5
    reborn = PreviewProvider(tmp_path, queue_seconds=QUEUE, clock=clock)
    handle = JobHandle.from_json(stored)
    assert (await reborn.status(handle)).state is JobState.PROCESSING
    clock.now += 1.0
    done = await reborn.status(handle)
    assert done.state is JobState.COMPLETED and done.video is not None
    assert probe_video(path_of(done.video.url)).width == 512

    third = PreviewProvider(tmp_path, queue_seconds=QUEUE, clock=clock)
    assert (await third.result(handle)) == done.video


async def test_concurrent_status_calls_render_once(provider: PreviewProvider, clock: Clock, tmp_path: Path) -> None:
    handle = await provider.submit(i2v("512P"))
    clock.now += QUEUE
    results = await asyncio.gather(*(provider.status(handle) for _ in range(3)))
    assert {r.state for r in results} == {JobState.COMPLETED}
    assert len({r.video for r in results}) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".input", ".mp4"]


async def test_cancel_before_and_after_render(provider: PreviewProvider, clock: Clock) -> None:
    waiting = await provider.submit(i2v("512P"))
    assert await provider.cancel(waiting) is True
    clock.now += QUEUE
    status = await provider.status(waiting)
    assert status.state is JobState.FAILED and status.charged is False
    with pytest.raises(ResultUnusable):
        await provider.result(waiting)

    finished = await provider.submit(i2v("512P"))
    clock.now += QUEUE
    assert (await provider.status(finished)).state is JobState.COMPLETED
    assert await provider.cancel(finished) is False
    assert (await provider.status(finished)).state is JobState.COMPLETED


async def test_missing_input_after_restart_fails_uncharged(provider: PreviewProvider, clock: Clock) -> None:
    handle = await provider.submit(i2v("512P"))
    (provider.out_dir / f"{handle.request_id}.input").unlink()
    clock.now += QUEUE
    status = await provider.status(handle)
    assert status.state is JobState.FAILED and status.charged is False


@pytest.mark.parametrize(
    "spec",
    [
        JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt="no image"),
        JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt="x", image=ImageInput(b"x", "image/png"), resolution="720P"),
        JobSpec(kind=JobKind.IMAGE_TO_VIDEO, prompt="x", image=ImageInput(b"x", "image/png"), duration_s=10),
        JobSpec(kind=JobKind.TEXT_TO_VIDEO, prompt="x", aspect_ratio="16:9"),
        JobSpec(kind=JobKind.TEXT_TO_VIDEO, prompt="x", duration_s=7),
    ],
)
async def test_rejects_what_the_models_refuse(provider: PreviewProvider, spec: JobSpec, tmp_path: Path) -> None:
    with pytest.raises(JobRejected):
        await provider.submit(spec)
    assert list(tmp_path.iterdir()) == []


async def test_forged_handles_cannot_name_other_files(provider: PreviewProvider) -> None:
    forged = JobHandle(provider="preview", request_id="../../etc/passwd", extra={"created": "0"})
    with pytest.raises(ResultUnusable):
        await provider.status(forged)
    with pytest.raises(ResultUnusable):
        await provider.cancel(forged)


async def test_webhooks_are_never_verified(provider: PreviewProvider) -> None:
    assert await provider.verify_webhook({}, b"{}") is None
