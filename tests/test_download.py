"""providers.download against a loopback server: real aiohttp, real files, no mocks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from providers.download import download_video
from providers.errors import ResultUnusable, TransientError
from tests.fakes.clips import png_bytes, tiny_mp4

SIGNATURE = "sig=SECRET-signature-9f2c"


class Server:
    def __init__(self, base: str, release: asyncio.Event) -> None:
        self.base = base
        self.release = release  # lets a deliberately stalled handler finish at teardown

    def url(self, path: str) -> str:
        return f"{self.base}{path}?{SIGNATURE}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    clip = tiny_mp4()
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=clip, content_type="application/octet-stream")  # fal's unhelpful type

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def png(request: web.Request) -> web.Response:
        return web.Response(body=png_bytes(), content_type="video/mp4")  # a lying content type

    async def big_declared(request: web.Request) -> web.Response:
        return web.Response(body=clip + b"\0" * 50_000)

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no Content-Length: the cap must hold while reading
        await resp.prepare(request)
        try:
            await resp.write(clip)
            for _ in range(1000):
                await resp.write(b"\0" * 16_384)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(clip))})
        await resp.prepare(request)
        await resp.write(clip[: len(clip) // 2])
        assert request.transport is not None
        request.transport.close()  # a reset mid-body
        return resp

    async def stall(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=clip)

    app = web.Application()
    app.router.add_get("/clip.mp4", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/image.mp4", png)
    app.router.add_get("/big-declared.mp4", big_declared)
    app.router.add_get("/big-chunked.mp4", big_chunked)
    app.router.add_get("/cut.mp4", cut)
    app.router.add_get("/stall.mp4", stall)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Server(f"http://127.0.0.1:{runner.addresses[0][1]}", release)
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_downloads_a_clip_atomically(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dest = tmp_path / "out" / "job.mp4"
    size = await download_video(session, server.url("/clip.mp4"), dest, max_bytes=10**6, provider="fal")
    assert size == len(tiny_mp4()) and dest.read_bytes() == tiny_mp4()
    assert leftovers(dest.parent) == ["job.mp4"]
    assert "SECRET" not in caplog.text and "/clip.mp4" in caplog.text


@pytest.mark.parametrize("code", [404, 410, 403, 400])
async def test_client_errors_mean_the_link_is_gone(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path, code: int
) -> None:
    with pytest.raises(ResultUnusable) as caught:
        await download_video(session, server.url(f"/status/{code}"), tmp_path / "a.mp4", max_bytes=10**6, provider="x")
    assert caught.value.status == code and "gone" in caught.value.detail
    assert "SECRET" not in str(caught.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [500, 502, 503, 429])
async def test_server_errors_are_transient(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path, code: int
) -> None:
    with pytest.raises(TransientError) as caught:
        await download_video(session, server.url(f"/status/{code}"), tmp_path / "a.mp4", max_bytes=10**6, provider="x")
    assert caught.value.status == code
    assert leftovers(tmp_path) == []


async def test_not_mp4_is_refused_whatever_the_content_type(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with pytest.raises(ResultUnusable, match="not an MP4"):
        await download_video(session, server.url("/image.mp4"), tmp_path / "a.mp4", max_bytes=10**6, provider="x")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("path", ["/big-declared.mp4", "/big-chunked.mp4"])
async def test_oversized_results_are_refused_and_deleted(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path, path: str
) -> None:
    with pytest.raises(ResultUnusable, match="large"):
        await download_video(session, server.url(path), tmp_path / "a.mp4", max_bytes=40_000, provider="x")
    assert leftovers(tmp_path) == []


async def test_reset_mid_body_is_transient(server: Server, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        await download_video(session, server.url("/cut.mp4"), tmp_path / "a.mp4", max_bytes=10**6, provider="x")
    assert leftovers(tmp_path) == []


async def test_timeout_is_transient(server: Server, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="timed out"):
        await download_video(
            session, server.url("/stall.mp4"), tmp_path / "a.mp4", max_bytes=10**6, provider="x", timeout=0.3
        )
    assert leftovers(tmp_path) == []


async def test_refused_connection_is_transient(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        await download_video(session, "http://127.0.0.1:9/clip.mp4", tmp_path / "a.mp4", max_bytes=100, provider="x")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.mp4", "data:video/mp4;base64,AAAA", "/tmp/a.mp4"])
async def test_other_schemes_are_unusable(session: aiohttp.ClientSession, tmp_path: Path, url: str) -> None:
    with pytest.raises(ResultUnusable):
        await download_video(session, url, tmp_path / "a.mp4", max_bytes=100, provider="x")


# -- file:// (the preview provider's results) -------------------------------------------------------


async def test_file_url_inside_allowed_dir(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    allowed = tmp_path / "renders"
    allowed.mkdir()
    source = allowed / "clip.mp4"
    source.write_bytes(tiny_mp4())
    dest = tmp_path / "delivered" / "job.mp4"
    size = await download_video(session, source.as_uri(), dest, max_bytes=10**6, provider="preview", allow_dir=allowed)
    assert size == len(tiny_mp4()) and dest.read_bytes() == tiny_mp4()
    assert leftovers(dest.parent) == ["job.mp4"]


async def test_file_url_outside_allowed_dir_or_without_one(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    allowed = tmp_path / "renders"
    allowed.mkdir()
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(tiny_mp4())
    sneaky = allowed / "link.mp4"
    sneaky.symlink_to(outside)  # inside by name, outside in fact
    dotdot = f"{allowed.as_uri()}/../secret.mp4"
    for url, allow in (
        (outside.as_uri(), allowed),
        (sneaky.as_uri(), allowed),
        (dotdot, allowed),
        (outside.as_uri(), None),
    ):
        with pytest.raises(ResultUnusable):
            await download_video(
                session, url, tmp_path / "out.mp4", max_bytes=10**6, provider="preview", allow_dir=allow
            )
    assert not (tmp_path / "out.mp4").exists()


async def test_file_url_checks_content_and_size(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    (tmp_path / "pic.mp4").write_bytes(png_bytes())
    (tmp_path / "clip.mp4").write_bytes(tiny_mp4())
    with pytest.raises(ResultUnusable, match="not an MP4"):
        await download_video(
            session,
            (tmp_path / "pic.mp4").as_uri(),
            tmp_path / "o1.mp4",
            max_bytes=10**6,
            provider="p",
            allow_dir=tmp_path,
        )
    with pytest.raises(ResultUnusable, match="larger"):
        await download_video(
            session,
            (tmp_path / "clip.mp4").as_uri(),
            tmp_path / "o2.mp4",
            max_bytes=100,
            provider="p",
            allow_dir=tmp_path,
        )
    with pytest.raises(ResultUnusable, match="gone"):
        await download_video(
            session,
            (tmp_path / "nope.mp4").as_uri(),
            tmp_path / "o3.mp4",
            max_bytes=100,
            provider="p",
            allow_dir=tmp_path,
        )
    assert leftovers(tmp_path) == ["clip.mp4", "pic.mp4"]
