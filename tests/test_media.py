"""bot.media on real files: every bad input a member (or the CLI) can send, real PyAV for video."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image, ImageFile

from bot.media import (
    AVIF_READABLE,
    MediaError,
    NotAVideo,
    check_image,
    looks_like_mp4,
    make_thumbnail,
    probe_video,
    read_image_source,
)
from tests.fakes.clips import tiny_mp4

MB = 1024 * 1024
LIMITS = {"max_bytes": 20 * MB, "max_pixels": 40_000_000}


def picture(width: int = 320, height: int = 200) -> Image.Image:
    """A noisy colour picture: it compresses badly, so cutting the file really removes pixel data."""
    noise = Image.effect_noise((width, height), 50)
    ramp = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (ramp, noise, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def encoded(fmt: str, width: int = 320, height: int = 200, **params: object) -> bytes:
    buf = io.BytesIO()
    picture(width, height).save(buf, fmt, **params)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, built row by row without ever holding the image: a real decompression bomb."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height but carries no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def refused(data: bytes, **limits: int) -> str:
    with pytest.raises(MediaError) as caught:
        check_image(data, **{**LIMITS, **limits})
    message = caught.value.user_message
    assert message and "\n" not in message and "Traceback" not in message
    return message


# -- good images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")]
)
def test_accepts_common_formats_with_mime_from_content(fmt: str, mime: str) -> None:
    data = encoded(fmt)
    image = check_image(data, **LIMITS)
    assert (image.format, image.mime, image.width, image.height) == (fmt, mime, 320, 200)
    assert image.data == data
    assert image.animated is False


@pytest.mark.skipif(not AVIF_READABLE, reason="this Pillow build has no AVIF support")
def test_accepts_avif_when_pillow_reads_it() -> None:
    image = check_image(encoded("AVIF", quality=60), **LIMITS)
    assert (image.format, image.mime) == ("AVIF", "image/avif")


@pytest.mark.skipif(AVIF_READABLE, reason="this Pillow build reads AVIF")
def test_refuses_avif_clearly_when_pillow_cannot_read_it() -> None:
    fake_avif = b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64
    assert "AVIF" in refused(fake_avif)


def test_animated_gif_is_accepted_and_reported() -> None:
    frames = [picture(100, 80).rotate(angle) for angle in (0, 90, 180)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = check_image(buf.getvalue(), **LIMITS)
    assert (image.format, image.mime, image.animated) == ("GIF", "image/gif", True)


def test_phone_mpo_jpeg_counts_as_a_still_jpeg() -> None:
    buf = io.BytesIO()
    left = picture(200, 100)
    left.save(buf, "MPO", save_all=True, append_images=[left.rotate(180)])  # a stereo pair, as phones write
    image = check_image(buf.getvalue(), **LIMITS)
    assert (image.format, image.mime, image.animated) == ("JPEG", "image/jpeg", False)


def test_mime_ignores_what_a_file_claims_to_be(tmp_path: Path) -> None:
    path = tmp_path / "holiday.png"  # JPEG bytes under a .png name
    path.write_bytes(encoded("JPEG"))
    with Image.open(path) as opened:
        assert opened.format == "JPEG"
    assert check_image(path.read_bytes(), **LIMITS).mime == "image/jpeg"


# -- bad images -------------------------------------------------------------------------------------


def test_refuses_empty_data() -> None:
    assert "empty" in refused(b"")


def test_refuses_too_many_bytes_and_says_the_limit_in_mb() -> None:
    assert "0.05 MB" in refused(encoded("PNG"), max_bytes=50_000)
    message = refused(b"\x89PNG" + b"\0" * (3 * MB - 4), max_bytes=2 * MB)
    assert message == "That image is 3 MB; the limit is 2 MB."


def test_refuses_text_as_not_an_image() -> None:
    message = refused(b"hello, this is just some text\n" * 10)
    assert message.startswith("That file is not an image I can read")
    assert "JPEG" in message and "PNG" in message and "WebP" in message and "GIF" in message


@pytest.mark.parametrize(("fmt", "name"), [("BMP", "BMP"), ("TIFF", "TIFF")])
def test_refuses_unsupported_formats_by_name(fmt: str, name: str) -> None:
    message = refused(encoded(fmt))
    assert name in message and "not accepted" in message and "JPEG" in message


def test_refuses_a_video_sent_as_an_image() -> None:
    assert "video" in refused(tiny_mp4())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_refuses_truncated_images(fmt: str, keep: float) -> None:
    data = encoded(fmt)
    message = refused(data[: int(len(data) * keep)])
    assert "incomplete or damaged" in message or "damaged" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never flipped to make the check pass


def test_refuses_png_missing_its_end_chunk() -> None:
    data = encoded("PNG")
    assert "damaged" in refused(data[:-12])  # IEND gone: pixels decode, the chunk walk does not


def test_refuses_corrupt_png_data() -> None:
    data = bytearray(encoded("PNG"))
    data[len(data) // 2] ^= 0xFF
    assert "damaged" in refused(bytes(data))


def test_refuses_tiny_images() -> None:
    message = refused(encoded("PNG", 40, 200))
    assert "40 × 200" in message and "64" in message
    check_image(encoded("PNG", 64, 64), **LIMITS)


def test_refuses_a_20000_square_png_bomb_fast() -> None:
    bomb = bilevel_png(20_000, 20_000)
    assert len(bomb) < 100_000  # 400 megapixels in under 100 kB
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    message = refused(bomb)
    assert time.perf_counter() - started < 0.5  # decoding 400 Mpx would take seconds and ~400 MB
    assert "too large" in message and "40 megapixels" in message
    assert warnings.filters == filters_before and limit_before == Image.MAX_IMAGE_PIXELS


def test_refuses_over_our_limit_from_the_header_before_decoding() -> None:
    # 2,000 × 2,000 is far below Pillow's own limit: only our check stands between it and a decode.
    message = refused(header_only_png(2000, 2000), max_pixels=1_000_000)
    assert "2000 × 2000" in message and "1 megapixels" in message


def test_pillow_bomb_warning_band_becomes_a_refusal() -> None:
    # 10,000 × 10,000 lies between Pillow's warning (89 Mpx) and error (179 Mpx) thresholds.
    message = refused(header_only_png(10_000, 10_000), max_pixels=200_000_000)
    assert "too large" in message


# -- read_image_source ------------------------------------------------------------------------------


async def test_reads_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "cat.webp"
    path.write_bytes(encoded("WEBP"))
    image = await read_image_source(str(path), session=None, **LIMITS)
    assert image.mime == "image/webp"


async def test_missing_path_names_only_what_was_given(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as caught:
        await read_image_source("nope/cat.png", session=None, **LIMITS)
    assert caught.value.user_message == "No file at nope/cat.png."


async def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as caught:
        await read_image_source(str(tmp_path), session=None, **LIMITS)
    assert "folder" in caught.value.user_message


async def test_local_text_and_empty_and_oversized_files(tmp_path: Path) -> None:
    text, empty, big = tmp_path / "notes.txt", tmp_path / "empty.png", tmp_path / "big.png"
    text.write_text("not a picture\n")
    empty.write_bytes(b"")
    big.write_bytes(encoded("PNG"))
    with pytest.raises(MediaError, match="not an image"):
        await read_image_source(str(text), session=None, **LIMITS)
    with pytest.raises(MediaError, match="empty"):
        await read_image_source(str(empty), session=None, **LIMITS)
    with pytest.raises(MediaError, match="MB"):
        await read_image_source(str(big), session=None, max_bytes=10_000, max_pixels=LIMITS["max_pixels"])


@pytest.mark.parametrize(
    "source", ["file:///etc/hostname", "ftp://127.0.0.1/cat.png", "data:image/png;base64,iVBORw0KGgo="]
)
async def test_other_schemes_are_refused(source: str) -> None:
    with pytest.raises(MediaError) as caught:
        await read_image_source(source, session=None, **LIMITS)
    assert "http(s)" in caught.value.user_message


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    png = encoded("PNG")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="text/plain")  # a lying content type must not matter

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="gone")

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="image/png")

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await resp.prepare(request)
        try:
            for _ in range(10_000):  # 640 MB if nobody stops reading
                await resp.write(b"\x89PNG" + b"\0" * (64 * 1024 - 4))
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    app = web.Application()
    app.router.add_get("/ok.png", ok)
    app.router.add_get("/missing.png", missing)
    app.router.add_get("/page.png", text)
    app.router.add_get("/endless.png", endless)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_url_source_ok(image_server: str) -> None:
    async with aiohttp.ClientSession() as session:
        image = await read_image_source(f"{image_server}/ok.png", session=session, **LIMITS)
    assert (image.mime, image.width) == ("image/png", 320)
    image = await read_image_source(f"{image_server}/ok.png", session=None, **LIMITS)  # its own session
    assert image.format == "PNG"


async def test_url_source_404(image_server: str) -> None:
    with pytest.raises(MediaError) as caught:
        await read_image_source(f"{image_server}/missing.png", session=None, **LIMITS)
    assert "404" in caught.value.user_message


async def test_url_source_non_image(image_server: str) -> None:
    with pytest.raises(MediaError, match="not an image"):
        await read_image_source(f"{image_server}/page.png", session=None, **LIMITS)


async def test_url_source_aborts_oversized_stream(image_server: str) -> None:
    started = time.perf_counter()
    with pytest.raises(MediaError) as caught:
        await read_image_source(f"{image_server}/endless.png", session=None, max_bytes=1 * MB, max_pixels=10**7)
    assert "larger than 1 MB" in caught.value.user_message
    assert time.perf_counter() - started < 5


# -- video ------------------------------------------------------------------------------------------


def test_looks_like_mp4() -> None:
    assert looks_like_mp4(tiny_mp4()[:16])
    assert not looks_like_mp4(encoded("PNG")[:16])
    assert not looks_like_mp4(b"\0\0\0\x18ftyp")  # too short to carry a brand
    assert not looks_like_mp4(b"\0\0\0\x18ftyp\xff\xfe\x00\x01")


def test_probe_real_mp4(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(tiny_mp4(64, 48, 12))
    info = probe_video(path)
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 64, 48, 12)
    assert info.duration_s == pytest.approx(0.5, abs=0.05)
    assert info.size_bytes == path.stat().st_size


@pytest.mark.parametrize("content", [b"just text\n" * 100, encoded("PNG"), b""])
def test_probe_refuses_non_videos(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "clip.mp4"  # the name says MP4; the bytes decide
    path.write_bytes(content)
    with pytest.raises(NotAVideo):
        probe_video(path)


def test_probe_refuses_a_cut_mp4(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    path.write_bytes(tiny_mp4(64, 48, 12)[:600])
    with pytest.raises(NotAVideo):
        probe_video(path)


@pytest.mark.parametrize(("width", "height", "frames"), [(640, 480, 48), (480, 854, 36), (64, 48, 12)])
def test_thumbnail_fits_telegram_rules(tmp_path: Path, width: int, height: int, frames: int) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(tiny_mp4(width, height, frames))
    thumb = make_thumbnail(video, tmp_path / "thumb.jpg")
    assert thumb.stat().st_size < 200_000
    with Image.open(thumb) as img:
        assert img.format == "JPEG"
        assert max(img.size) <= 320
        assert img.size[0] / img.size[1] == pytest.approx(width / height, rel=0.02)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_thumbnail_of_a_non_video_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "x.mp4"
    path.write_text("nope")
    with pytest.raises(NotAVideo):
        make_thumbnail(path, tmp_path / "t.jpg")
    assert not (tmp_path / "t.jpg").exists()
