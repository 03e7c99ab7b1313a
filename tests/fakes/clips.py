"""Real media for the fakes: a tiny H.264 MP4 and a PNG, made once per test session."""

from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

import av
from PIL import Image


@functools.cache
def tiny_mp4(width: int = 64, height: int = 48, frames: int = 12, fps: int = 24) -> bytes:
    """A valid faststart H.264 MP4 of `frames` frames, as a provider would return."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(frames):
                img = Image.new("RGB", (width, height), (i * 20 % 256, 80, 160))
                frame = av.VideoFrame.from_image(img)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path.read_bytes()


@functools.cache
def png_bytes(width: int = 96, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()
