"""The command line as a newcomer uses it: animate with the preview provider, credits, and bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from bot.media import probe_video
from tests.cli_run import run_cli
from tests.fakes.clips import png_bytes

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.png"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20_000) -> bytes:
    """A PNG whose header claims side x side pixels: tiny on disk, 1.2 GB if anyone decoded it."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_animate_writes_a_playable_five_second_mp4(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "animate", str(SAMPLE), "the sun rises over the hills", "--out", "clip.mp4")
    assert result.code == 0, result.err
    out = tmp_path / "clip.mp4"
    assert result.out.strip() == str(out)
    info = probe_video(out)
    assert info.codec == "h264"
    assert abs(info.duration_s - 5.0) <= 0.5
    assert max(info.width, info.height) == 512
    assert "preview" in result.err  # the live progress line names the provider
    balance = run_cli(tmp_path, "credits", "balance", "local")
    assert balance.out.strip() == "16"  # 20 starting credits, 4 captured
    history = run_cli(tmp_path, "credits", "history", "local").out
    assert "hold" in history and "capture" in history and "release" not in history


def test_animate_at_1024p_and_video_at_10s(tmp_path: Path) -> None:
    hi = run_cli(tmp_path, "animate", str(SAMPLE), "pan left", "--resolution", "1024P", "--out", "hi.mp4")
    assert hi.code == 0, hi.err
    assert max(probe_video(tmp_path / "hi.mp4").width, probe_video(tmp_path / "hi.mp4").height) == 1024
    vid = run_cli(tmp_path, "video", "a paper boat on a pond", "--duration", "10s", "--aspect-ratio", "1:1")
    assert vid.code == 0, vid.err
    info = probe_video(tmp_path / "video.mp4")
    assert abs(info.duration_s - 10.0) <= 0.5 and info.width == info.height
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == str(20 - 12 - 2)


def test_credits_grant_and_adjust_never_below_zero(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "credits", "grant", "alice", "5").out.strip() == "25"
    refused = run_cli(tmp_path, "credits", "grant", "alice", "-100")
    assert refused.code == 1 and "cannot go below zero" in refused.err
    assert run_cli(tmp_path, "credits", "grant", "alice", "-5", "--reason", "typo").out.strip() == "20"
    history = run_cli(tmp_path, "credits", "history", "alice").out
    assert "adjustment" in history and "typo" in history


def _bmp() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 150), (1, 2, 3)).save(buf, "BMP")
    return buf.getvalue()


# case -> (file content, or None for no file; words the member's sentence must contain)
BAD_IMAGES: dict[str, tuple[bytes | None, str]] = {
    "missing": (None, "No file at"),
    "text": (b"just some words, not a picture\n", "not an image"),
    "truncated": (png_bytes(200, 150)[:-40], "damaged"),
    "bomb": (bomb_png(), "pixels"),
    "bmp": (_bmp(), "not accepted"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_get_one_sentence_and_no_charge(tmp_path: Path, case: str) -> None:
    content, expect = BAD_IMAGES[case]
    path = tmp_path / f"{case}.img"
    if content is not None:
        path.write_bytes(content)
    result = run_cli(tmp_path, "animate", str(path), "make it move")
    assert result.code == 1
    lines = result.err_lines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert lines[0].endswith("."), lines[0]
    assert expect in lines[0], lines[0]
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == "20"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["animate", str(SAMPLE), "   "], "Please add a prompt"),
        (["animate", str(SAMPLE), "x" * 5000], "please keep it under 2,000"),
        (["video", ""], "Please add a prompt"),
    ],
)
def test_bad_prompts_get_one_sentence_and_no_charge(tmp_path: Path, args: list[str], expect: str) -> None:
    result = run_cli(tmp_path, *args)
    assert result.code == 1
    assert result.err_lines() == [line for line in result.err_lines() if expect in line] and result.err_lines()
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == "20"


@pytest.mark.parametrize(
    "args",
    [
        ["animate", str(SAMPLE), "go", "--resolution", "720P"],
        ["animate", str(SAMPLE), "go", "--provider", "runway"],
        ["video", "go", "--duration", "7s"],
        ["video", "go", "--aspect-ratio", "16:9"],
    ],
)
def test_unknown_option_values_are_one_line(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(tmp_path, *args)
    assert result.code == 2
    assert len(result.err_lines()) == 1 and "invalid choice" in result.err
    assert not (tmp_path / "bot.db").exists()  # refused before anything was opened, let alone charged


def test_too_few_credits_is_refused_with_the_numbers(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "animate", str(SAMPLE), "go", "--resolution", "1024P", env={"STARTING_CREDITS": "5"})
    assert result.code == 1
    assert result.err_lines() == ["This clip costs 12 credits and you have 5. Nothing was charged."]
    assert run_cli(tmp_path, "credits", "balance", "local", env={"STARTING_CREDITS": "5"}).out.strip() == "5"


def test_steps_out_of_range_is_refused(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "animate", str(SAMPLE), "go", "--steps", "500")
    assert result.code == 1 and result.err_lines() == ["Steps must be a whole number from 1 to 50."]


def test_a_provider_without_a_key_is_named_as_not_set_up(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "animate", str(SAMPLE), "go", "--provider", "fal")
    assert result.code == 1
    assert result.err_lines() == ["The fal provider isn't set up on this bot; choose one of: preview."]
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == "20"
