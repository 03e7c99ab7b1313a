"""Reading fal's replies: queue URLs, the video File, runner logs and their timestamps."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from providers.base import VideoResult

APP_NAMESPACES = ("workflows", "comfy")  # ids whose first segment is a namespace, not the owner


def video_from_output(output: Any) -> VideoResult | None:
    """The `video` File of a Kandinsky output, or None when it is missing or has no http(s) URL."""
    video = output.get("video") if isinstance(output, dict) else None
    if not isinstance(video, dict):
        return None
    url = video.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    size = video.get("file_size")
    valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    content_type = video.get("content_type")
    return VideoResult(
        url=url,
        size=size if valid_size else None,
        content_type=content_type if isinstance(content_type, str) else None,
    )


def built_urls(base: str, model: str, request_id: str) -> dict[str, str]:
    """Queue URLs from owner/app alone: fal drops the model subpath after submit (PROTOCOLS §2)."""
    parts = model.split("/")
    keep = 3 if parts[0] in APP_NAMESPACES else 2
    root = f"{base}/{'/'.join(parts[:keep])}/requests/{request_id}"
    return {"status_url": f"{root}/status", "response_url": root, "cancel_url": f"{root}/cancel"}


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def read_logs(raw: Any) -> tuple[tuple[str, ...], float | None]:
    """Log messages in order, and the earliest parseable timestamp among them (when the runner started)."""
    if not isinstance(raw, list):
        return (), None
    messages: list[str] = []
    times: list[float] = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("message"), str):
            messages.append(entry["message"])
        when = parse_time(entry.get("timestamp"))
        if when is not None:
            times.append(when)
    return tuple(messages), (min(times) if times else None)


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an ISO 8601 string (zone optional, UTC assumed) or a number (s or ms)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return None
        # Milliseconds since the epoch pass 1e11 in 1973; seconds will not reach it for millennia.
        return number / 1000 if number > 1e11 else number
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return parse_time(float(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
