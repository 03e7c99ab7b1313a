"""The fake fal server itself: it must refuse what fal refuses and progress the way fal does."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from providers.base import JobState
from tests.fakes.clips import png_bytes
from tests.fakes.fal_jobs import Plan, Submission
from tests.fakes.fal_server import FakeFal
from tests.fakes.fal_testkit import ManualClock, RecordingSleep, fal_provider, i2v_spec, t2v_spec

I2V = "fal-ai/kandinsky5-pro/image-to-video"
T2V = "fal-ai/kandinsky5/text-to-video/distill"
PNG_URI = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(
    session: aiohttp.ClientSession, fake: FakeFal, model: str, body: Any, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Key {key or fake.api_key}"}
    async with session.post(f"{fake.base_url}/{model}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def i2v(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a cat", "image_url": PNG_URI, **fields}


@pytest.mark.parametrize(
    ("model", "body", "field", "kind"),
    [
        (I2V, i2v(resolution="512p"), "resolution", "enum"),
        (I2V, i2v(acceleration="fast"), "acceleration", "enum"),
        (I2V, i2v(duration="10s"), "duration", "enum"),
        (I2V, i2v(num_inference_steps=0), "num_inference_steps", "greater_than_equal"),
        (I2V, i2v(num_inference_steps=41), "num_inference_steps", "less_than_equal"),
        (I2V, i2v(num_inference_steps="28"), "num_inference_steps", "int_type"),
        (I2V, i2v(image_url="ftp://example.com/a.png"), "image_url", "url_type"),
        (I2V, i2v(image_url="data:image/png;base64,%%%"), "image_url", "image_load_error"),
        (I2V, i2v(image_url="data:text/plain;base64,aGk="), "image_url", "unsupported_image_format"),
        (I2V, {"prompt": "a cat"}, "image_url", "missing"),
        (I2V, i2v(steps=20), "steps", "extra_forbidden"),
        (T2V, {"prompt": "a dog", "resolution": "512P"}, "resolution", "enum"),
        (T2V, {"prompt": "a dog", "aspect_ratio": "16:9"}, "aspect_ratio", "enum"),
        (T2V, {"prompt": "a dog", "num_inference_steps": 20}, "num_inference_steps", "extra_forbidden"),
        (T2V, {"aspect_ratio": "1:1"}, "prompt", "missing"),
    ],
)
async def test_fake_refuses_what_the_schema_forbids(
    session: aiohttp.ClientSession, model: str, body: dict[str, Any], field: str, kind: str
) -> None:
    async with FakeFal.running(validate_at_submit=True) as fake:
        status, reply = await post(session, fake, model, body)
    assert status == 422
    [error] = reply["detail"]
    assert (error["loc"], error["type"]) == (["body", field], kind)
    assert isinstance(error["msg"], str)
    assert error["msg"]


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (I2V, i2v(resolution="1024P", duration="5s", num_inference_steps=40, acceleration="none")),
        (I2V, i2v(image_url="https://example.com/dragon.jpg")),
        (T2V, {"prompt": "a dog", "aspect_ratio": "2:3", "duration": "10s", "resolution": "512x768"}),
    ],
)
async def test_fake_accepts_documented_inputs(session: aiohttp.ClientSession, model: str, body: dict[str, Any]) -> None:
    async with FakeFal.running(validate_at_submit=True) as fake:
        status, reply = await post(session, fake, model, body)
    assert status == 200
    assert set(reply) == {"request_id", "status_url", "response_url", "cancel_url", "queue_position"}


async def test_fake_requires_the_key_header(session: aiohttp.ClientSession) -> None:
    async with FakeFal.running() as fake:
        status, reply = await post(session, fake, I2V, i2v(), key="nope")
        assert (status, reply) == (401, {"detail": "Invalid key"})
        async with session.post(f"{fake.base_url}/{I2V}", json=i2v()) as resp:
            assert resp.status == 401
        async with session.post(f"{fake.base_url}/fal-ai/unknown-model", json=i2v(), headers=auth(fake)) as resp:
            assert resp.status == 404
        assert fake.jobs == {}


def auth(fake: FakeFal) -> dict[str, str]:
    return {"Authorization": f"Key {fake.api_key}"}


async def test_logs_only_when_asked(session: aiohttp.ClientSession) -> None:
    async with FakeFal.running() as fake:
        _, reply = await post(session, fake, I2V, i2v())
        fake.start(reply["request_id"])
        async with session.get(reply["status_url"], headers=auth(fake)) as resp:
            assert (await resp.json())["logs"] is None
        async with session.get(reply["status_url"], params={"logs": "1"}, headers=auth(fake)) as resp:
            [entry] = (await resp.json())["logs"]
        assert set(entry) == {"message", "level", "source", "timestamp"}


async def test_schedule_drives_progress_from_the_clock(session: aiohttp.ClientSession) -> None:
    mono = ManualClock(1000.0)
    seen: list[Submission] = []

    def plan(sub: Submission) -> Plan:
        seen.append(sub)
        return Plan(queue_seconds=10, processing_seconds=30, error="OOM" if sub.index == 2 else None)

    async with FakeFal.running(schedule=plan, clock=mono) as fake:
        fal = fal_provider(session, fake, RecordingSleep())
        handles = [await fal.submit(i2v_spec()), await fal.submit(t2v_spec()), await fal.submit(i2v_spec())]
        assert [s.index for s in seen] == [0, 1, 2]
        assert [s.model_id for s in seen] == [I2V, T2V, I2V]
        first = await fal.status(handles[0])
        assert (first.state, first.queue_position) == (JobState.QUEUED, 0)
        assert (await fal.status(handles[2])).queue_position == 1
        mono.advance(10)
        assert (await fal.status(handles[0])).state is JobState.PROCESSING
        mono.advance(30)
        assert (await fal.status(handles[0])).state is JobState.COMPLETED
        assert (await fal.result(handles[1])).size
        failed = await fal.status(handles[2])
        assert (failed.state, failed.error) == (JobState.FAILED, "OOM")


async def test_tuple_schedule_and_manual_override(session: aiohttp.ClientSession) -> None:
    mono = ManualClock(0.0)
    async with FakeFal.running(schedule=lambda sub: (5.0, 5.0), clock=mono) as fake:
        fal = fal_provider(session, fake, RecordingSleep())
        handle = await fal.submit(i2v_spec())
        fake.fail(handle.request_id, "stopped by hand")
        assert (await fal.status(handle)).state is JobState.FAILED


async def test_cancel_replies(session: aiohttp.ClientSession) -> None:
    async with FakeFal.running(honour_cancel_in_progress=False) as fake:
        _, reply = await post(session, fake, I2V, i2v())
        fake.start(reply["request_id"])
        async with session.put(reply["cancel_url"], headers=auth(fake)) as resp:
            assert (resp.status, await resp.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        assert fake.state(reply["request_id"]) == "IN_PROGRESS"  # the app chose to finish the work
        fake.complete(reply["request_id"])
        async with session.put(reply["cancel_url"], headers=auth(fake)) as resp:
            assert (resp.status, await resp.json()) == (400, {"status": "ALREADY_COMPLETED"})
        gone = reply["cancel_url"].replace(reply["request_id"], "missing")
        async with session.put(gone, headers=auth(fake)) as resp:
            assert (resp.status, await resp.json()) == (404, {"status": "NOT_FOUND"})


async def test_jwks_shape(session: aiohttp.ClientSession) -> None:
    async with FakeFal.running() as fake:
        async with session.get(fake.jwks_url) as resp:
            [key] = (await resp.json())["keys"]
        assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
        assert len(base64.urlsafe_b64decode(key["x"] + "==")) == 32
