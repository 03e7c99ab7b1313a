"""Fetch a finished clip at once: result URLs expire, content types lie, sizes must be capped (PROTOCOLS §14.5)."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import aiohttp

from providers.errors import ResultUnusable, TransientError
from providers.http import parse_retry_after, safe_url

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
FLUSH_BYTES = 1024 * 1024  # batch writes so the disk is touched from a thread about once per MiB
SNIFF_BYTES = 12


def _looks_like_mp4(head: bytes) -> bool:
    # Same rule as bot.media.looks_like_mp4; providers must not import the application package.
    return len(head) >= 12 and head[4:8] == b"ftyp" and all(0x20 <= b < 0x7F for b in head[8:12])


def _temp_beside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")


def _open_temp(tmp: Path) -> BinaryIO:
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp.open("xb")


def _finish(fh: BinaryIO, tmp: Path, dest: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())  # the rename must never publish a file whose bytes are still in the page cache
    fh.close()
    os.replace(tmp, dest)


def _discard(fh: BinaryIO | None, tmp: Path) -> None:
    if fh is not None:
        fh.close()
    tmp.unlink(missing_ok=True)


async def download_video(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    provider: str,
    timeout: float = 120,  # noqa: ASYNC109 -- it bounds one aiohttp request (its ClientTimeout), not the caller
    allow_dir: Path | None = None,
) -> int:
    """Stream a result MP4 into `dest` (atomically), returning its size; ResultUnusable or TransientError."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return await asyncio.to_thread(_copy_local, url, dest, max_bytes, provider, allow_dir)
    if scheme not in ("http", "https"):
        raise ResultUnusable(provider, f"the result link is not http(s) ({scheme or 'no scheme'})")
    shown = safe_url(url)  # signed result URLs carry credentials in the query
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            _check_status(resp, provider, shown)
            declared = resp.content_length
            if declared is not None and declared > max_bytes:
                raise ResultUnusable(provider, f"the result is too large ({declared} bytes, limit {max_bytes})")
            size = await _stream(resp, dest, max_bytes, provider, shown)
    except TimeoutError as exc:
        raise TransientError(provider, f"downloading the result timed out after {timeout:g}s") from exc
    except aiohttp.InvalidURL as exc:
        raise ResultUnusable(provider, "the result link is not a valid URL") from exc
    except aiohttp.TooManyRedirects as exc:
        raise ResultUnusable(provider, "the result link redirects in a loop") from exc
    except aiohttp.ClientError as exc:
        # Resets, refused connections and bodies cut short of their Content-Length (aiohttp raises
        # ClientPayloadError for those): the link may still work on a retry.
        raise TransientError(provider, f"downloading the result failed ({type(exc).__name__})") from exc
    log.info("%s: downloaded %d bytes from %s", provider, size, shown)
    return size


def _check_status(resp: aiohttp.ClientResponse, provider: str, shown: str) -> None:
    status = resp.status
    if 200 <= status < 300:
        return
    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise TransientError(
            provider, f"the result link answered HTTP {status}", status=status, retry_after=retry_after
        )
    if status in (404, 410):
        raise ResultUnusable(provider, f"the result link is gone (HTTP {status})", status=status)
    log.info("%s: result link %s answered HTTP %d", provider, shown, status)
    raise ResultUnusable(provider, f"the result link is gone or refused (HTTP {status})", status=status)


async def _stream(resp: aiohttp.ClientResponse, dest: Path, max_bytes: int, provider: str, shown: str) -> int:
    tmp = _temp_beside(dest)
    fh: BinaryIO | None = None
    size = 0
    pending = bytearray()
    sniffed = False
    try:
        fh = await asyncio.to_thread(_open_temp, tmp)
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise ResultUnusable(provider, f"the result is larger than the {max_bytes}-byte limit")
            pending += chunk
            if not sniffed and len(pending) >= SNIFF_BYTES:
                if not _looks_like_mp4(bytes(pending[:SNIFF_BYTES])):
                    raise ResultUnusable(provider, "the result is not an MP4 video")
                sniffed = True
            if len(pending) >= FLUSH_BYTES:
                await asyncio.to_thread(fh.write, bytes(pending))
                pending.clear()
        if not sniffed and not _looks_like_mp4(bytes(pending[:SNIFF_BYTES])):
            raise ResultUnusable(provider, "the result is not an MP4 video")
        if pending:
            await asyncio.to_thread(fh.write, bytes(pending))
        await asyncio.to_thread(_finish, fh, tmp, dest)
        fh = None
    except BaseException:
        # Also on cancellation: never leave a partial clip (or its temp file) behind. A close and an unlink are
        # quick, and awaiting a thread here could itself be cancelled.
        _discard(fh, tmp)
        raise
    return size


def _copy_local(url: str, dest: Path, max_bytes: int, provider: str, allow_dir: Path | None) -> int:
    """Copy a file:// result (the offline preview provider's) when it lies inside `allow_dir`."""
    parts = urlsplit(url)
    if allow_dir is None:
        raise ResultUnusable(provider, "file:// results are not accepted here")
    if parts.netloc not in ("", "localhost"):
        raise ResultUnusable(provider, "file:// results must be local")
    # resolve() follows symlinks and "..", so a link inside the directory cannot point outside it.
    source = Path(url2pathname(parts.path)).resolve()
    if not source.is_relative_to(allow_dir.resolve()):
        raise ResultUnusable(provider, "the result file lies outside the allowed directory")
    if not source.is_file():
        raise ResultUnusable(provider, "the result file is gone")
    tmp = _temp_beside(dest)
    size = 0
    try:
        with source.open("rb") as src, _open_temp(tmp) as out:
            if not _looks_like_mp4(src.read(SNIFF_BYTES)):
                raise ResultUnusable(provider, "the result is not an MP4 video")
            src.seek(0)
            while block := src.read(FLUSH_BYTES):
                size += len(block)
                if size > max_bytes:
                    raise ResultUnusable(provider, f"the result is larger than the {max_bytes}-byte limit")
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        raise ResultUnusable(provider, f"the result file could not be copied ({type(exc).__name__})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: copied %d bytes from a local result", provider, size)
    return size
