"""Image checks and video probing: pure functions over bytes and files, no chat logic.

Facts used: PROTOCOLS.md §13 (PyAV probe/thumbnail recipe, Pillow decompression-bomb behaviour), §11 (Telegram
thumbnail rules) and seed 000 (the input formats fal accepts: JPEG, PNG, WebP, GIF, AVIF).
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import av
from PIL import Image, ImageFile, UnidentifiedImageError, features

MIN_SIDE = 64
URL_TIMEOUT_S = 30.0
CHUNK = 64 * 1024

# Pillow format name -> MIME type. MPO is how Pillow names multi-picture JPEGs from phone cameras: still a JPEG.
MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "AVIF": "image/avif",
}
AVIF_READABLE = features.check("avif") is True
# Only these Pillow plugins ever see member data: exotic decoders (EPS, PSD, …) stay out of reach.
OPEN_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", *(("AVIF",) if AVIF_READABLE else ()))
ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF or AVIF" if AVIF_READABLE else "JPEG, PNG, WebP or GIF"

# Leading bytes of formats we refuse, so the refusal can name what was sent.
_KNOWN_OTHER: tuple[tuple[bytes, int, str], ...] = (
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"8BPS", 0, "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"%PDF", 0, "PDF"),
    (b"qoif", 0, "QOI"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xffO\xffQ", 0, "JPEG 2000"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

# warnings.catch_warnings swaps a process-wide filter list; two threads interleaving enter/exit would restore
# each other's copies and leak a filter, so our own checks take turns through this (header-only, fast) section.
_WARNINGS_LOCK = threading.Lock()


class MediaError(Exception):
    """A file the member sent (or the bot made) cannot be used; `user_message` is one sentence for the member."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class NotAVideo(MediaError):
    """The file is not an MP4/MOV container with a video stream."""


@dataclass(frozen=True)
class CheckedImage:
    """An image that decoded completely; `mime` comes from the decoded format, never from a name or header."""

    data: bytes
    mime: str
    format: str
    width: int
    height: int
    animated: bool = False  # providers use the first frame; reported so a front-end can say so


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    duration_s: float
    frames: int
    size_bytes: int


def megabytes(n: int) -> str:
    """A byte count as MB for members: '20 MB', '7.5 MB', '0.01 MB'."""
    value = n / (1024 * 1024)
    if value >= 10 or value == int(value):
        return f"{value:.0f} MB"
    return f"{value:.1f} MB" if value >= 0.1 else f"{value:.2f} MB"


def _megapixels(n: int) -> str:
    value = n / 1_000_000
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _name_of_other(head: bytes) -> str | None:
    for magic, offset, name in _KNOWN_OTHER:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
        if brand in _AVIF_BRANDS:
            return "AVIF"
        return "video"
    text = head.lstrip()[:256].lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return "SVG"
    return None


def _refuse_unreadable(data: bytes) -> MediaError:
    other = _name_of_other(data[:64])
    if other == "video":
        return MediaError(f"That looks like a video, not a still image; send a {ACCEPTED_TEXT} image.")
    if other == "AVIF":  # only reached when this Pillow build cannot decode AVIF
        return MediaError(f"AVIF images cannot be read on this server; send a {ACCEPTED_TEXT} image instead.")
    if other is not None:
        return MediaError(f"{other} images are not accepted; send a {ACCEPTED_TEXT} image.")
    return MediaError(f"That file is not an image I can read; send a {ACCEPTED_TEXT} image.")


def _too_many_pixels(max_pixels: int, width: int | None = None, height: int | None = None) -> MediaError:
    size = f" ({width} × {height} pixels)" if width and height else ""
    return MediaError(
        f"That image is too large{size}; the limit is {_megapixels(max_pixels)} megapixels, so please send a "
        "smaller one."
    )


def _open(data: bytes, formats: tuple[str, ...]) -> ImageFile.ImageFile:
    """Image.open from the header only, with Pillow's bomb warning raised as an error for this call alone."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        # Pillow warns (not raises) between 1× and 2× its global limit; make that an error here only.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=formats)


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Validate member image bytes completely (size, format, pixel count, full decode) or raise MediaError."""
    if not data:
        raise MediaError("That file is empty; send a picture.")
    if len(data) > max_bytes:
        raise MediaError(f"That image is {megabytes(len(data))}; the limit is {megabytes(max_bytes)}.")
    try:
        im = _open(data, OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise _refuse_unreadable(data) from exc
    except Exception as exc:  # a header so broken the plugin itself failed: same answer for the member
        raise MediaError("That image file is damaged and cannot be read; please send it again.") from exc
    with im:
        width, height = im.size
        # Header dimensions, before a single pixel is decoded: a small file may claim a huge canvas.
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, width, height)
        if width < MIN_SIDE or height < MIN_SIDE:
            raise MediaError(
                f"That image is only {width} × {height} pixels; send one at least {MIN_SIDE} pixels on each side."
            )
        fmt = str(im.format)
        if fmt not in MIME_BY_FORMAT:
            raise _refuse_unreadable(data)
        try:
            # GIF's is_animated skips frame 1's data without decoding it; WebP and AVIF read it from the header.
            # An MPO's extra frames are a camera's stereo or depth views, not an animation.
            animated = fmt != "MPO" and bool(getattr(im, "is_animated", False))
            im.seek(0)
            # load() decodes every byte of the first frame; with ImageFile.LOAD_TRUNCATED_IMAGES False (the default,
            # never changed here) a cut-off file raises instead of being padded with grey.
            im.load()
        except Exception as exc:
            raise MediaError("That image file is incomplete or damaged; please send it again.") from exc
    if fmt == "PNG":
        # PNG decoding stops at the end of the pixel data; verify() also checks every chunk CRC up to IEND.
        try:
            with _open(data, ("PNG",)) as again:
                again.verify()
        except Exception as exc:
            raise MediaError("That image file is incomplete or damaged; please send it again.") from exc
    mime = MIME_BY_FORMAT[fmt]
    return CheckedImage(
        data=data,
        mime=mime,
        format="JPEG" if fmt == "MPO" else fmt,
        width=width,
        height=height,
        animated=animated,
    )


# -- reading the CLI's IMAGE argument ---------------------------------------------------------------


async def read_image_source(
    source: str, *, session: aiohttp.ClientSession | None, max_bytes: int, max_pixels: int
) -> CheckedImage:
    """Read and check an image from a local path or an http(s) URL (the CLI's `animate IMAGE`)."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        data = await _fetch_url(source, session, max_bytes)
    else:
        data = await asyncio.to_thread(_read_path, source, scheme, max_bytes)
    return await asyncio.to_thread(check_image, data, max_bytes=max_bytes, max_pixels=max_pixels)


def _read_path(source: str, scheme: str, max_bytes: int) -> bytes:
    path = Path(source).expanduser()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        # One-letter "schemes" are Windows drive letters; longer ones (file:, ftp:, data:) are links we refuse.
        if len(scheme) > 1:
            raise MediaError(f"Only local files and http(s) links can be read, not {scheme}: links.") from None
        raise MediaError(f"No file at {source}.") from None
    except OSError as exc:
        raise MediaError(f"Cannot read {source} ({exc.strerror or 'unreadable'}).") from exc
    if path.is_dir():
        raise MediaError(f"{source} is a folder, not an image file.")
    if size > max_bytes:
        raise MediaError(f"That image is {megabytes(size)}; the limit is {megabytes(max_bytes)}.")
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may grow between stat and read
    except OSError as exc:
        raise MediaError(f"Cannot read {source} ({exc.strerror or 'unreadable'}).") from exc
    if len(data) > max_bytes:
        raise MediaError(f"That image is larger than {megabytes(max_bytes)}, the limit.")
    return data


async def _fetch_url(url: str, session: aiohttp.ClientSession | None, max_bytes: int) -> bytes:
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await _fetch_url(url, own, max_bytes)
    too_big = MediaError(f"The image at that link is larger than {megabytes(max_bytes)}, the limit.")
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=URL_TIMEOUT_S)) as resp:
            if not 200 <= resp.status < 300:
                raise MediaError(f"The link answered HTTP {resp.status}; I could not fetch the image.")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise too_big
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise too_big  # leaving the block closes the connection: the rest is never read
            return bytes(buf)
    except TimeoutError as exc:
        raise MediaError(f"The link did not answer within {URL_TIMEOUT_S:.0f} seconds.") from exc
    except aiohttp.InvalidURL as exc:
        raise MediaError("That link is not a valid URL.") from exc
    except aiohttp.ClientError as exc:
        raise MediaError(f"Could not fetch the image from that link ({type(exc).__name__}).") from exc


# -- video --------------------------------------------------------------------------------------------


def looks_like_mp4(head: bytes) -> bool:
    """True when the bytes start with an ISO BMFF `ftyp` box (MP4/MOV); provider content types are unreliable."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return False
    # The major brand is four printable ASCII characters (isom, mp42, qt  …); garbage here is not a real box.
    return all(0x20 <= byte < 0x7F for byte in head[8:12])


def probe_video(path: Path) -> VideoInfo:
    """Codec, size, duration and frame count of an MP4/MOV file; NotAVideo for anything else."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise NotAVideo("The video file could not be read.") from exc
    # Sniff first: FFmpeg would happily "open" a PNG as a one-frame video through its image demuxers.
    if not looks_like_mp4(head):
        raise NotAVideo("That file is not an MP4 video.")
    try:
        with av.open(str(path)) as container:
            if "mp4" not in container.format.name and "mov" not in container.format.name:
                raise NotAVideo("That file is not an MP4 video.")
            if not container.streams.video:
                raise NotAVideo("That file has no video in it.")
            stream = container.streams.video[0]
            if container.duration is not None:
                duration = container.duration / 1_000_000  # AV_TIME_BASE is microseconds
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = 0.0
            return VideoInfo(
                codec=str(stream.codec_context.name),
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                duration_s=duration,
                frames=int(stream.frames),
                size_bytes=size,
            )
    except av.FFmpegError as exc:
        raise NotAVideo("That video file is damaged and cannot be read.") from exc


def make_thumbnail(video: Path, dest: Path, *, max_side: int = 320) -> Path:
    """A JPEG (< 200 kB, ≤ max_side a side) from the frame near 1 s, as Telegram wants for sendVideo."""
    info = probe_video(video)
    target = min(1.0, info.duration_s / 2)
    picked: av.VideoFrame | None = None
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if target > 0:
                # Seeking lands on the keyframe at or before the target; decode forward from there (§13).
                container.seek(int(target * 1_000_000))
            for frame in container.decode(stream):
                picked = frame
                if frame.time is None or frame.time >= target:
                    break
            image = picked.to_image() if picked is not None else None  # type: ignore[no-untyped-call]
    except av.FFmpegError as exc:
        raise NotAVideo("That video file is damaged and cannot be read.") from exc
    if image is None:
        raise NotAVideo("That video has no frames.")
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        for quality in (85, 70, 50, 30):
            image.save(tmp, "JPEG", quality=quality, optimize=True)
            if tmp.stat().st_size < 200 * 1000:  # Telegram: "less than 200 kB"
                break
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
