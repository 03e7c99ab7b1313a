"""An offline provider: renders a real H.264 MP4 locally so the whole bot runs without keys.

Image-to-video is a slow zoom (Ken Burns) into the input image; text-to-video is a drifting colour gradient with the
prompt drawn on it, at the sizes fal's distill model uses (PROTOCOLS §1c). Encoding follows PROTOCOLS §13.
Everything status needs lives in the handle and in `out_dir`, so a restarted process picks a job up where it was.
"""

from __future__ import annotations

import asyncio
import colorsys
import io
import logging
import math
import os
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont, ImageOps

from providers.base import (
    Capabilities,
    JobHandle,
    JobKind,
    JobSpec,
    JobState,
    JobStatus,
    VideoResult,
    WebhookEvent,
)
from providers.errors import JobRejected, ResultUnusable

log = logging.getLogger(__name__)

NAME = "preview"
FPS = 24
ZOOM = 1.18  # how far the Ken Burns zoom goes in by the last frame
LONG_SIDE = {"512P": 512, "1024P": 1024}
T2V_SIZES = {"3:2": (768, 512), "1:1": (512, 512), "2:3": (512, 768)}  # fal distill's sizes (seed 004)
QUEUE_START = 3  # queue position reported at submit; counts down to 0 over the queued half
MAX_LINES = 6  # of prompt text on a text-to-video preview
PROMPT_CHARS = 300  # what fits on screen; stored in the handle so rendering survives a restart

CAPABILITIES = Capabilities(
    kinds=frozenset({JobKind.IMAGE_TO_VIDEO, JobKind.TEXT_TO_VIDEO}),
    resolutions=tuple(LONG_SIDE),
    durations=(5, 10),
    prices_usd_micros={
        (JobKind.IMAGE_TO_VIDEO, "512P", 5): 0,
        (JobKind.IMAGE_TO_VIDEO, "1024P", 5): 0,
        (JobKind.TEXT_TO_VIDEO, "any", 5): 0,
        (JobKind.TEXT_TO_VIDEO, "any", 10): 0,
    },
    # The stand-in takes every knob any real provider takes, so a setup tried offline works online.
    accelerations=("none", "regular", "fast", "ultra_fast"),
    steps_range=(1, 50),
    push=False,
)


class PreviewProvider:
    """Renders clips on this machine after a short simulated queue; free, offline, deterministic."""

    name = NAME
    capabilities = CAPABILITIES

    def __init__(self, out_dir: Path, *, queue_seconds: float = 1.5, clock: Callable[[], float] = time.time) -> None:
        self.out_dir = out_dir
        self.queue_seconds = max(0.0, queue_seconds)
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    # -- paths: the request id is ours (uuid hex), so it is safe in a file name ----------------------

    def _input_path(self, request_id: str) -> Path:
        return self.out_dir / f"{request_id}.input"

    def video_path(self, request_id: str) -> Path:
        """Where the finished clip of `request_id` lives once rendered."""
        return self.out_dir / f"{request_id}.mp4"

    def _cancel_path(self, request_id: str) -> Path:
        return self.out_dir / f"{request_id}.cancelled"

    # -- protocol -------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobHandle:
        """Store the input and start the simulated queue; JobRejected for what the real models refuse too."""
        extra = _validate(spec)
        request_id = f"preview-{uuid.uuid4().hex}"
        if spec.kind is JobKind.IMAGE_TO_VIDEO and spec.image is not None:
            await asyncio.to_thread(_write_atomic, self._input_path(request_id), spec.image.data)
        extra["created"] = repr(self._clock())
        extra["prompt"] = spec.prompt[:PROMPT_CHARS]
        return JobHandle(provider=NAME, request_id=request_id, extra=extra)

    async def status(self, handle: JobHandle) -> JobStatus:
        """Queued for the first half of queue_seconds, processing for the second, then rendered and completed."""
        request_id = _own_id(handle)
        if self._cancel_path(request_id).exists():
            return JobStatus(JobState.FAILED, error="The job was cancelled.", charged=False)
        video = self.video_path(request_id)
        if video.exists():
            return JobStatus(JobState.COMPLETED, video=self._video(video))
        created = _float(handle.extra, "created")
        half = self.queue_seconds / 2
        elapsed = self._clock() - created
        if half > 0 and elapsed < half:
            position = min(QUEUE_START, max(0, math.ceil(QUEUE_START * (half - elapsed) / half) - 1))
            return JobStatus(JobState.QUEUED, queue_position=position)
        if elapsed < self.queue_seconds:
            return JobStatus(JobState.PROCESSING, started_at=created + half, logs=("preview: rendering",))
        try:
            await self._render_once(handle)
        except Exception as exc:
            log.exception("preview render of %s failed", request_id)
            return JobStatus(JobState.FAILED, error=f"The preview render failed: {exc}", charged=False)
        return JobStatus(JobState.COMPLETED, started_at=created + half, video=self._video(video))

    async def result(self, handle: JobHandle) -> VideoResult:
        """The rendered clip as a file:// URL; ResultUnusable until status has rendered it."""
        video = self.video_path(_own_id(handle))
        if not video.exists():
            raise ResultUnusable(NAME, "the preview clip is not rendered yet")
        return self._video(video)

    async def cancel(self, handle: JobHandle) -> bool:
        """Mark the job cancelled; True unless it was already rendered."""
        request_id = _own_id(handle)
        if self.video_path(request_id).exists():
            return False
        await asyncio.to_thread(_write_atomic, self._cancel_path(request_id), b"")
        return True

    async def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """The preview provider never calls back."""
        return None

    # -- rendering ------------------------------------------------------------------------------

    def _video(self, path: Path) -> VideoResult:
        return VideoResult(url=path.resolve().as_uri(), size=path.stat().st_size, content_type="video/mp4")

    async def _render_once(self, handle: JobHandle) -> None:
        request_id = handle.request_id
        lock = self._locks.setdefault(request_id, asyncio.Lock())
        async with lock:  # concurrent status calls in this process render once
            if not self.video_path(request_id).exists():
                await asyncio.to_thread(self._render, handle)
        self._locks.pop(request_id, None)

    def _render(self, handle: JobHandle) -> None:
        extra = handle.extra
        duration = int(extra.get("duration", "5"))
        if extra.get("kind") == JobKind.IMAGE_TO_VIDEO.value:
            source = self._input_path(handle.request_id)
            if not source.exists():
                raise ResultUnusable(NAME, "the stored input image is gone")
            frames = zoom_frames(source.read_bytes(), LONG_SIDE[extra.get("resolution", "512P")], duration)
        else:
            width, height = T2V_SIZES[extra.get("aspect", "3:2")]
            frames = gradient_frames(extra.get("prompt", ""), width, height, duration)
        dest = self.video_path(handle.request_id)
        # A crash mid-render leaves only a dot-temp file, never a half clip under the final name.
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            encode_mp4(tmp, frames)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def _validate(spec: JobSpec) -> dict[str, str]:
    if spec.kind is JobKind.IMAGE_TO_VIDEO:
        if spec.image is None:
            raise JobRejected(NAME, "Image-to-video needs an image.")
        if spec.resolution not in LONG_SIDE:
            raise JobRejected(NAME, f"The preview renders image-to-video at 512P or 1024P, not {spec.resolution}.")
        if spec.duration_s != 5:
            raise JobRejected(NAME, "Image-to-video clips last 5 seconds.")
        return {"kind": spec.kind.value, "resolution": spec.resolution, "duration": "5"}
    aspect = spec.aspect_ratio or "3:2"
    if aspect not in T2V_SIZES:
        raise JobRejected(NAME, f"Aspect ratio must be one of {', '.join(T2V_SIZES)}.")
    if spec.duration_s not in (5, 10):
        raise JobRejected(NAME, "Text-to-video clips last 5 or 10 seconds.")
    return {"kind": spec.kind.value, "aspect": aspect, "duration": str(spec.duration_s)}


def _own_id(handle: JobHandle) -> str:
    # The id becomes a file name: accept only the shape submit makes, so a forged handle cannot name another path.
    rid = handle.request_id
    if not rid.startswith("preview-") or not all(c in "0123456789abcdef" for c in rid[len("preview-") :]):
        raise ResultUnusable(NAME, "not a preview job id")
    return rid


def _float(extra: Mapping[str, str], key: str) -> float:
    try:
        return float(extra[key])
    except (KeyError, ValueError) as exc:
        raise ResultUnusable(NAME, f"the job handle lacks a valid {key!r}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _even(value: float) -> int:
    # libx264 with yuv420p refuses odd dimensions (PROTOCOLS §13).
    return max(2, 2 * round(value / 2))


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)  # slow in, slow out


def encode_mp4(path: Path, frames: Iterable[Image.Image]) -> None:
    """Encode RGB frames as faststart H.264 (libx264, yuv420p, CRF 23, veryfast) at 24 fps."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        for index, image in enumerate(frames):
            if index == 0:
                stream.width, stream.height = image.size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "23", "preset": "veryfast"}
            frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def zoom_frames(image_bytes: bytes, long_side: int, duration_s: int) -> Iterator[Image.Image]:
    """A slow zoom into the image at `long_side` pixels on its longer side, keeping its aspect ratio."""
    with Image.open(io.BytesIO(image_bytes)) as raw:
        raw.seek(0)  # animated GIF/WebP: the first frame, as the hosted models use
        upright = ImageOps.exif_transpose(raw).convert("RGB")
    scale = long_side / max(upright.size)
    width, height = _even(upright.width * scale), _even(upright.height * scale)
    # One resize up front to the zoomed-in size; each frame is then a cheap bilinear crop-and-scale of it.
    base = upright.resize((round(width * ZOOM), round(height * ZOOM)), Image.Resampling.LANCZOS)
    count = FPS * duration_s
    label = _label("preview")

    def make(index: int) -> Image.Image:
        t = _ease(index / max(1, count - 1))
        zoom = 1 + (ZOOM - 1) * t
        box_w, box_h = base.width / zoom, base.height / zoom
        # Drift slightly right and up while zooming, for a little parallax-like motion.
        cx = base.width / 2 + base.width * 0.04 * t
        cy = base.height / 2 - base.height * 0.03 * t
        left = min(max(0.0, cx - box_w / 2), base.width - box_w)
        top = min(max(0.0, cy - box_h / 2), base.height - box_h)
        frame = base.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + box_w, top + box_h))
        frame.paste(label, (8, height - label.height - 8), label)
        return frame

    # Frames are made one at a time as the encoder asks: a 10-second clip never holds 240 images at once.
    return (make(index) for index in range(count))


def gradient_frames(prompt: str, width: int, height: int, duration_s: int) -> Iterator[Image.Image]:
    """A colour gradient drifting sideways behind the prompt, at width × height."""
    travel = width  # the window slides one frame-width over the clip
    strip_w = width + travel
    hues = Image.new("RGB", (strip_w, 1))
    hues.putdata(
        [
            tuple(round(255 * c) for c in colorsys.hsv_to_rgb((0.55 + 0.5 * x / width) % 1.0, 0.55, 0.95))
            for x in range(strip_w)
        ]
    )
    light = hues.resize((strip_w, height), Image.Resampling.NEAREST)
    dark = light.point(lambda v: v * 45 // 100)
    # Darker towards the bottom, so the text panel and the label stay legible.
    background = Image.composite(dark, light, Image.linear_gradient("L").resize((strip_w, height)))
    text = _text_panel(prompt or "(no prompt)", width, height)
    text_pos = ((width - text.width) // 2, (height - text.height) // 2)
    label = _label("preview")
    count = FPS * duration_s

    def make(index: int) -> Image.Image:
        offset = round(travel * index / max(1, count - 1))
        frame = background.crop((offset, 0, offset + width, height))
        frame.paste(text, text_pos, text)
        frame.paste(label, (8, height - label.height - 8), label)
        return frame

    return (make(index) for index in range(count))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow ≥ 10.1 bundles a scalable default font when FreeType is present; else its bitmap font.
    return ImageFont.load_default(size=size)


def _text_panel(prompt: str, width: int, height: int) -> Image.Image:
    font = _font(max(16, width // 24))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    char_w = max(1.0, measure.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    lines = textwrap.wrap(" ".join(prompt.split()), width=max(8, int(width * 0.8 / char_w))) or ["(no prompt)"]
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], lines[MAX_LINES - 1].rstrip(".,;: ") + " …"]
    text = "\n".join(lines)
    left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font, spacing=6, align="center")
    pad = 16
    size = (min(width, math.ceil(right - left) + 2 * pad), min(height, math.ceil(bottom - top) + 2 * pad))
    panel = Image.new("RGBA", size)
    draw = ImageDraw.Draw(panel)
    draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=14, fill=(0, 0, 0, 110))
    draw.multiline_text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 255), spacing=6, align="center")
    return panel


def _label(text: str) -> Image.Image:
    font = _font(14)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    size = (math.ceil(right - left) + 12, math.ceil(bottom - top) + 8)
    label = Image.new("RGBA", size)
    draw = ImageDraw.Draw(label)
    draw.rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius=6, fill=(0, 0, 0, 120))
    draw.text((6 - left, 4 - top), text, font=font, fill=(255, 255, 255, 230))
    return label
