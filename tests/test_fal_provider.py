"""FalProvider against the loopback fake fal queue: request shapes, progress, failures, retries, secrets."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from providers.base import ImageInput, JobHandle, JobState, Provider
from providers.errors import (
    JobRejected,
    OperatorError,
    ResultUnusable,
    SubmitOutcomeUnknown,
    TransientError,
)
from providers.fal import CAPABILITIES, I2V_MODEL, T2V_MODEL, FalProvider
from providers.fal_parse import parse_time
from tests.fakes.clips import png_bytes, tiny_mp4
from tests.fakes.fal_faults import HttpError
from tests.fakes.fal_server import FakeFal
from tests.fakes.fal_testkit import RecordingSleep, fal_provider, i2v_spec, t2v_spec


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal.running() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def fal(session: aiohttp.ClientSession, fake: FakeFal, sleeps: RecordingSleep) -> FalProvider:
    return fal_provider(session, fake, sleeps)


def test_provider_protocol_and_prices() -> None:
    assert isinstance(FalProvider.__new__(FalProvider), Provider)
    assert CAPABILITIES.price_usd_micros(i2v_spec(resolution="512P")) == 200_000
    assert CAPABILITIES.price_usd_micros(i2v_spec(resolution="1024P")) == 600_000
    assert CAPABILITIES.price_usd_micros(t2v_spec(duration_s=5)) == 50_000
    assert CAPABILITIES.price_usd_micros(t2v_spec(duration_s=10)) == 100_000
    assert not CAPABILITIES.supports(i2v_spec(duration_s=10))
    assert CAPABILITIES.push


# -- request shapes ---------------------------------------------------------------------------------


async def test_i2v_submit_sends_the_documented_request(fal: FalProvider, fake: FakeFal) -> None:
    spec = i2v_spec(resolution="1024P", steps=20, acceleration="none", webhook_url="https://bot.example/hooks/fal?t=1")
    handle = await fal.submit(spec)

    [sent] = fake.calls("submit")
    assert sent.method == "POST"
    assert sent.path == "/fal-ai/kandinsky5-pro/image-to-video"
    assert sent.headers["Authorization"] == f"Key {fake.api_key}"
    assert sent.query == {"fal_webhook": "https://bot.example/hooks/fal?t=1"}
    image_url = sent.json.pop("image_url")
    assert sent.json == {
        "prompt": "the dragon turns its head",
        "resolution": "1024P",
        "duration": "5s",
        "num_inference_steps": 20,
        "acceleration": "none",
    }
    prefix = "data:image/png;base64,"
    assert image_url.startswith(prefix)
    assert base64.b64decode(image_url[len(prefix) :]) == png_bytes()
    root = f"{fake.base_url}/fal-ai/kandinsky5-pro/requests/{handle.request_id}"
    assert handle.provider == "fal"
    assert dict(handle.extra) == {
        "model": I2V_MODEL,
        "status_url": f"{root}/status",
        "response_url": root,
        "cancel_url": f"{root}/cancel",
    }
    assert JobHandle.from_json(handle.to_json()) == handle


async def test_optional_fields_are_left_to_fal_defaults(fal: FalProvider, fake: FakeFal) -> None:
    await fal.submit(i2v_spec())
    [sent] = fake.calls("submit")
    assert set(sent.json) == {"prompt", "image_url", "resolution", "duration"}
    assert sent.query == {}


async def test_i2v_happy_path_by_polling(fal: FalProvider, fake: FakeFal, session: aiohttp.ClientSession) -> None:
    handle = await fal.submit(i2v_spec())
    rid = handle.request_id

    queued = await fal.status(handle)
    assert (queued.state, queued.queue_position, queued.started_at) == (JobState.QUEUED, 0, None)

    fake.start(rid)
    running = await fal.status(handle)
    assert running.state is JobState.PROCESSING
    assert running.logs == ("Loading Kandinsky 5 pipeline",)
    job = fake.job(rid)
    assert job.started is not None
    assert running.started_at == pytest.approx(job.wall(job.started), abs=1e-3)

    fake.complete(rid)
    done = await fal.status(handle)
    assert done.state is JobState.COMPLETED
    assert done.error is None
    assert done.logs[-1] == "Generation finished"

    video = await fal.result(handle)
    assert video.url.startswith(f"{fake.base_url}/files/")
    assert video.size == len(tiny_mp4())
    assert video.content_type == "application/octet-stream"
    async with session.get(video.url) as resp:
        assert await resp.read() == tiny_mp4()

    paths = {r.path for r in fake.requests if r.route in ("status", "result")}
    assert paths == {f"/fal-ai/kandinsky5-pro/requests/{rid}/status", f"/fal-ai/kandinsky5-pro/requests/{rid}"}
    assert all(r.query == {"logs": "1"} for r in fake.calls("status"))


async def test_t2v_sends_aspect_ratio_and_duration_only(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(t2v_spec(aspect_ratio="2:3", duration_s=10, resolution="1024P", steps=12))
    [sent] = fake.calls("submit")
    assert sent.path == "/fal-ai/kandinsky5/text-to-video/distill"
    assert sent.json == {"prompt": "a dog in a red hat", "aspect_ratio": "2:3", "duration": "10s"}
    assert handle.extra["model"] == T2V_MODEL
    assert handle.extra["status_url"].endswith(f"/fal-ai/kandinsky5/requests/{handle.request_id}/status")

    fake.complete(handle.request_id)
    assert (await fal.status(handle)).state is JobState.COMPLETED
    assert (await fal.result(handle)).size == len(tiny_mp4())


async def test_t2v_defaults_to_three_by_two(fal: FalProvider, fake: FakeFal) -> None:
    await fal.submit(t2v_spec())
    assert fake.calls("submit")[0].json == {"prompt": "a dog in a red hat", "aspect_ratio": "3:2", "duration": "5s"}


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (i2v_spec(steps=0), "between 1 and 40"),
        (i2v_spec(steps=41), "between 1 and 40"),
        (i2v_spec(acceleration="fast"), "none or regular"),
        (i2v_spec(resolution="512p"), "512P or 1024P"),
        (i2v_spec(duration_s=10), "5-second"),
        (i2v_spec(image=None), "needs an image"),
        (t2v_spec(aspect_ratio="16:9"), "Aspect ratio"),
        (t2v_spec(duration_s=7), "5 or 10 seconds"),
    ],
)
async def test_invalid_specs_are_refused_before_any_request(
    fal: FalProvider, fake: FakeFal, spec: object, reason: str
) -> None:
    with pytest.raises(JobRejected, match=reason) as caught:
        await fal.submit(spec)  # type: ignore[arg-type]
    assert caught.value.charged is False
    assert fake.requests == []


async def test_large_image_uses_its_public_url(session: aiohttp.ClientSession, fake: FakeFal) -> None:
    fal = fal_provider(session, fake, RecordingSleep(), max_data_uri_bytes=100)
    image = ImageInput(png_bytes(), "image/png", public_url="https://cdn.discordapp.com/a/b.png?ex=1")
    await fal.submit(i2v_spec(image=image))
    assert fake.calls("submit")[0].json["image_url"] == "https://cdn.discordapp.com/a/b.png?ex=1"


async def test_large_image_without_public_url_is_refused(session: aiohttp.ClientSession, fake: FakeFal) -> None:
    fal = fal_provider(session, fake, RecordingSleep(), max_data_uri_bytes=100)
    with pytest.raises(JobRejected, match="too large to send inline"):
        await fal.submit(i2v_spec(image=ImageInput(png_bytes(), "image/png")))
    assert fake.requests == []


# -- URLs -------------------------------------------------------------------------------------------


async def test_rebuilding_the_url_with_the_subpath_finds_nothing(
    fal: FalProvider, fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    handle = await fal.submit(i2v_spec())
    wrong = f"{fake.base_url}/{I2V_MODEL}/requests/{handle.request_id}/status"
    async with session.get(wrong, headers={"Authorization": f"Key {fake.api_key}"}) as resp:
        assert resp.status == 404
    other_app = f"{fake.base_url}/fal-ai/kandinsky5/requests/{handle.request_id}/status"
    async with session.get(other_app, headers={"Authorization": f"Key {fake.api_key}"}) as resp:
        assert resp.status == 404


async def test_urls_missing_from_the_reply_are_built_from_owner_and_app(
    session: aiohttp.ClientSession, sleeps: RecordingSleep
) -> None:
    async with FakeFal.running(minimal_webhook_reply=True) as fake:
        fal = fal_provider(session, fake, sleeps)
        handle = await fal.submit(t2v_spec(webhook_url="https://bot.example/hooks/fal"))
        assert handle.extra["response_url"] == f"{fake.base_url}/fal-ai/kandinsky5/requests/{handle.request_id}"
        assert (await fal.status(handle)).state is JobState.QUEUED


async def test_a_handle_with_only_the_model_still_reaches_the_job(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    bare = JobHandle("fal", handle.request_id, {"model": I2V_MODEL})
    fake.complete(handle.request_id)
    assert (await fal.status(bare)).state is JobState.COMPLETED
    with pytest.raises(OperatorError):
        await fal.status(JobHandle("fal", handle.request_id, {}))


async def test_urls_on_another_host_are_not_trusted_with_the_key(fal: FalProvider, fake: FakeFal) -> None:
    reply = {"request_id": "r-1", "status_url": "https://collector.example/steal", "response_url": None}
    fake.faults.add("submit", HttpError(200, body=reply))
    handle = await fal.submit(i2v_spec())
    assert handle.extra["status_url"] == f"{fake.base_url}/fal-ai/kandinsky5-pro/requests/r-1/status"
    assert handle.extra["response_url"] == f"{fake.base_url}/fal-ai/kandinsky5-pro/requests/r-1"


async def test_submit_reply_without_request_id_is_an_unknown_outcome(fal: FalProvider, fake: FakeFal) -> None:
    fake.faults.add("submit", HttpError(200, body={"status": "IN_QUEUE"}))
    with pytest.raises(SubmitOutcomeUnknown):
        await fal.submit(i2v_spec())


# -- status -----------------------------------------------------------------------------------------


async def test_fake_answers_202_until_completed_then_200(
    fal: FalProvider, fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    handle = await fal.submit(i2v_spec())
    auth = {"Authorization": f"Key {fake.api_key}"}
    seen = []
    for step in (lambda: None, lambda: fake.start(handle.request_id), lambda: fake.complete(handle.request_id)):
        step()
        async with session.get(handle.extra["status_url"], headers=auth) as resp:
            seen.append((resp.status, (await resp.json())["status"]))
    assert seen == [(202, "IN_QUEUE"), (202, "IN_PROGRESS"), (200, "COMPLETED")]


async def test_queue_position_counts_the_requests_ahead(fal: FalProvider, fake: FakeFal) -> None:
    handles = [await fal.submit(i2v_spec()) for _ in range(3)]
    assert [(await fal.status(h)).queue_position for h in handles] == [0, 1, 2]
    fake.start(handles[0].request_id)
    assert (await fal.status(handles[2])).queue_position == 1
    t2v = await fal.submit(t2v_spec())  # another app has its own queue
    assert (await fal.status(t2v)).queue_position == 0


async def test_started_at_is_the_earliest_parseable_log_time(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.start(handle.request_id)
    fake.add_log(handle.request_id, "warm-up", "2026-01-07T10:00:00Z")
    fake.add_log(handle.request_id, "odd", "yesterday afternoon")
    fake.add_log(handle.request_id, "none", None)
    status = await fal.status(handle)
    assert status.started_at == parse_time("2026-01-07T10:00:00+00:00")
    assert status.logs[-3:] == ("warm-up", "odd", "none")


def test_parse_time_is_lenient() -> None:
    assert parse_time("2026-05-22T13:17:32.110Z") == pytest.approx(1779455852.11)
    assert parse_time("2026-05-22 13:17:32") == parse_time("2026-05-22T13:17:32+00:00")
    assert parse_time(1779455852110) == pytest.approx(1779455852.11)
    assert parse_time("1779455852") == 1779455852.0
    for junk in (None, "", "soon", True, "nan", [], {}):
        assert parse_time(junk) is None


async def test_completed_with_error_is_failed_and_result_gives_the_reason(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.fail(handle.request_id, "The prompt was flagged by the content checker", loc=("body", "prompt"))
    status = await fal.status(handle)
    assert status.state is JobState.FAILED
    assert status.error == "The prompt was flagged by the content checker"
    assert status.charged is True
    with pytest.raises(JobRejected) as caught:
        await fal.result(handle)
    assert caught.value.status == 422
    assert caught.value.detail == "The prompt was flagged by the content checker (prompt)"


async def test_infrastructure_failure_is_not_charged(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.fail(handle.request_id, "Runner crashed", error_type="runner_server_error")
    status = await fal.status(handle)
    assert (status.state, status.error, status.charged) == (
        JobState.FAILED,
        "Runner crashed [runner_server_error]",
        False,
    )


async def test_invalid_input_fails_at_the_runner_with_fal_422(fal: FalProvider, fake: FakeFal) -> None:
    # Real fal enqueues any JSON; the app validates it when it runs (PROTOCOLS §2, fal request-errors).
    handle = await fal.submit(i2v_spec(image=ImageInput(b"not an image at all", "image/png")))
    status = await fal.status(handle)
    assert status.state is JobState.FAILED
    assert "Could not load the image" in (status.error or "")
    with pytest.raises(JobRejected, match=r"Could not load the image: unknown file format \(image_url\)"):
        await fal.result(handle)


async def test_invalid_input_refused_at_submit_when_fal_validates_early(
    session: aiohttp.ClientSession, sleeps: RecordingSleep
) -> None:
    async with FakeFal.running(validate_at_submit=True) as fake:
        fal = fal_provider(session, fake, sleeps)
        with pytest.raises(JobRejected) as caught:
            await fal.submit(i2v_spec(image=ImageInput(b"GIF", "image/tiff")))
        assert caught.value.status == 422
        assert caught.value.detail == "Unsupported image format image/tiff (image_url)"
        assert len(fake.calls("submit")) == 1


async def test_unknown_status_is_processing_and_logged_once(
    fal: FalProvider, fake: FakeFal, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await fal.submit(i2v_spec())
    fake.faults.add("status", HttpError(202, body={"status": "IN_WARMUP", "logs": None}), times=2)
    with caplog.at_level(logging.WARNING, logger="providers.fal"):
        first, second = await fal.status(handle), await fal.status(handle)
    assert first.state is second.state is JobState.PROCESSING
    assert [r.message for r in caplog.records].count(
        "fal returned unknown status 'IN_WARMUP'; treating it as processing"
    ) == 1
    assert (await fal.status(handle)).state is JobState.QUEUED  # faults used up: the real state again


async def test_result_before_completion_is_transient(fal: FalProvider, fake: FakeFal) -> None:
    handle = await fal.submit(i2v_spec())
    fake.start(handle.request_id)
    with pytest.raises(TransientError, match="not ready"):
        await fal.result(handle)


@pytest.mark.parametrize("output", [{"video": None}, {}, {"video": {"url": "ftp://files/x.mp4"}}, {"video": {}}])
async def test_result_without_a_usable_video_is_unusable(fal: FalProvider, fake: FakeFal, output: dict) -> None:
    handle = await fal.submit(i2v_spec())
    fake.complete(handle.request_id, output=output)
    with pytest.raises(ResultUnusable):
        await fal.result(handle)


async def test_result_files_as_the_cdn_serves_them(
    fal: FalProvider, fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    big, png = await fal.submit(i2v_spec()), await fal.submit(i2v_spec())
    fake.complete(big.request_id, content=b"\0" * 3_000_000)
    fake.complete(png.request_id, content=png_bytes())
    assert (await fal.result(big)).size == 3_000_000  # the size is reported; the cap is enforced by the caller
    async with session.get((await fal.result(png)).url) as resp:
        assert (await resp.read()).startswith(b"\x89PNG")
    fake.drop_file(big.request_id)
    async with session.get((await fal.result(big)).url) as resp:
        assert resp.status == 404
