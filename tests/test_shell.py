"""The shell front-end driven through its stdin, as `make run` starts it with no tokens."""

from __future__ import annotations

import re
from pathlib import Path

from bot.media import probe_video
from tests.cli_run import run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.png"


def test_a_session_in_the_shell(tmp_path: Path) -> None:
    typed = "\n".join(
        [
            "/help",
            "/balance",
            f"/animate {SAMPLE} the sun rises over the hills",
            f"/animate {SAMPLE} the sun rises over the hills",
            "/video a paper boat drifts on a pond --duration 5s",
            "/animate nope.png make it move",
            f"/animate {SAMPLE}",
            "/animate " + str(SAMPLE) + " go --resolution 720P",
            "/frobnicate",
            "hello bot",
            '/animate "unclosed',
            "",
        ]
    )
    result = run_cli(tmp_path, "run", stdin=typed)
    assert result.code == 0, result.err
    out = result.out
    assert "/animate IMAGE PROMPT" in out  # /help
    assert "You have 20 credits." in out
    accepted = re.findall(r"Job (\w+) accepted: (\d) credits? held\. Balance (\d+)\.", out)
    assert [(c, b) for _, c, b in accepted] == [("4", "16"), ("1", "15")]
    image_job, text_job = accepted[0][0], accepted[1][0]
    assert f"I'm already making that exact clip for you (job {image_job})" in out
    assert "No file at nope.png." in out
    assert "Please add a prompt describing the motion you want." in out
    assert "Resolution '720P' isn't available; choose one of: 512P, 1024P." in out
    assert "Unknown command /frobnicate" in out
    assert "Commands start with a slash" in out
    assert "unmatched quote" in out
    for job in (image_job, text_job):
        done = re.search(rf"\[job {job}\] Here is your clip .*\n  video: (\S+) \((\d+)x(\d+), 5\.0s\)", out)
        assert done, out
        info = probe_video(tmp_path / done.group(1))
        assert info.codec == "h264" and abs(info.duration_s - 5) <= 0.5
    assert "Traceback" not in result.err
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == "15"


def test_jobs_left_in_flight_finish_on_the_next_start(tmp_path: Path) -> None:
    # A long simulated queue, and the shell quits at once: the job stays held in the database...
    first = run_cli(
        tmp_path, "shell", stdin=f"/animate {SAMPLE} slow zoom\n/quit\n", env={"PREVIEW_QUEUE_SECONDS": "30"}
    )
    assert first.code == 0
    job = re.search(r"Job (\w+) accepted", first.out)
    assert job
    assert run_cli(tmp_path, "credits", "balance", "local").out.strip() == "16"
    # ...and the next start picks it up and delivers it, charging once.
    second = run_cli(tmp_path, "run", stdin="", env={"PREVIEW_QUEUE_SECONDS": "0.2"})
    assert second.code == 0
    assert f"[job {job.group(1)}] Here is your clip" in second.out
    history = run_cli(tmp_path, "credits", "history", "local").out
    assert history.count("hold") == 1 and history.count("capture") == 1


def test_a_busy_web_port_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "run", stdin="", env={"WEB_PORT": str(port)})
    assert result.code == 2
    assert result.err_lines() == [
        f"The web server cannot listen on 127.0.0.1:{port} (address already in use); set WEB_HOST or WEB_PORT."
    ]


def test_sigterm_stops_cleanly_and_the_job_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.cli_run import bot_env

    env = bot_env(tmp_path, {"PREVIEW_QUEUE_SECONDS": "30"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"/animate {SAMPLE} hold on\n")
    proc.stdin.flush()
    for line in proc.stdout:  # wait until the shell has seen the job through to the provider's queue
        if "Queued" in line:
            break
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Stopped; unfinished jobs resume on the next start." in err
    assert "Traceback" not in err
    second = run_cli(tmp_path, "run", stdin="", env={"PREVIEW_QUEUE_SECONDS": "0.2"})
    assert "Here is your clip" in second.out
    history = run_cli(tmp_path, "credits", "history", "local").out
    assert history.count("hold") == 1 and history.count("capture") == 1 and "release" not in history
