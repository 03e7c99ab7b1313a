"""Settings are checked at start: one line per problem, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

from tests.cli_run import run_cli


def test_each_problem_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "credits",
        "balance",
        "local",
        env={"PROVIDERS": "pixazo,wavespeed", "PUBLIC_BASE_URL": "ftp://example.org", "DATABASE_URL": "mysql://x"},
    )
    assert result.code == 2
    assert result.err.splitlines() == [
        "config: PROVIDERS lists pixazo but PIXAZO_API_KEY is not set.",
        "config: PROVIDERS lists wavespeed but WAVESPEED_API_KEY is not set.",
        "config: PUBLIC_BASE_URL must start with http:// or https://.",
        "config: DATABASE_URL must look like sqlite:///data/animabot.db or sqlite:////abs/path.db.",
    ]
    assert not (tmp_path / "bot.db").exists()


def test_bad_values_name_the_variable_not_the_value(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "credits",
        "balance",
        "local",
        env={"STARTING_CREDITS": "-5", "WEB_PORT": "http", "PROVIDERS": "fal,runway", "FAL_KEY": "sk-very-secret"},
    )
    assert result.code == 2
    lines = result.err.splitlines()
    assert sorted(line.split(":")[1].strip() for line in lines) == [
        "PROVIDERS (entry 2)",
        "STARTING_CREDITS",
        "WEB_PORT",
    ]
    assert "sk-very-secret" not in result.err


def test_env_file_in_the_working_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STARTING_CREDITS=7\n# a comment\nLOG_LEVEL=WARNING\n")
    result = run_cli(tmp_path, "credits", "balance", "newcomer", env={"STARTING_CREDITS": ""})
    assert result.code == 0 and result.out.strip() == "7"


def test_absolute_database_url(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "bot.db"
    result = run_cli(tmp_path, "credits", "grant", "bob", "3", env={"DATABASE_URL": f"sqlite:///{db}"})
    assert result.code == 0 and result.out.strip() == "23"
    assert db.exists()


def test_mixing_preview_with_real_providers_is_pointed_out(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "animate", "missing.png", "go", env={"PROVIDERS": "fal,preview", "FAL_KEY": "k"})
    assert "members may be charged for an offline preview clip" in result.err
