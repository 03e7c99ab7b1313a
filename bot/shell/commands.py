"""Parsing chat-style commands typed in the shell: `/animate PATH PROMPT [--resolution 1024P] ...`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from bot.errors import UserError

OPTIONS = {"--resolution", "--steps", "--acceleration", "--provider", "--duration", "--aspect-ratio"}


@dataclass(frozen=True)
class Command:
    name: str
    args: list[str]
    options: dict[str, str] = field(default_factory=dict)


def parse(line: str) -> Command | None:
    """A typed line as a command; None for a blank line. UserError for anything malformed."""
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        raise UserError("Commands start with a slash; type /help to see them.")
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise UserError("That line has an unmatched quote.") from exc
    name, rest = tokens[0][1:].lower(), tokens[1:]
    args: list[str] = []
    options: dict[str, str] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("--"):
            key, eq, value = token.partition("=")
            if key not in OPTIONS:
                raise UserError(f"Unknown option {key}; options are {', '.join(sorted(OPTIONS))}.")
            if not eq:
                if i + 1 >= len(rest):
                    raise UserError(f"Option {key} needs a value.")
                i += 1
                value = rest[i]
            options[key[2:]] = value
        else:
            args.append(token)
        i += 1
    return Command(name, args, options)


def parse_duration(text: str) -> int:
    """'5s', '5' or '10s' as whole seconds."""
    raw = text.strip().lower().removesuffix("s")
    if not raw.isdigit():
        raise UserError(f"Duration {text!r} isn't a number of seconds like 5s or 10s.")
    return int(raw)


def parse_steps(text: str) -> int:
    if not text.strip().isdigit():
        raise UserError(f"Steps {text!r} isn't a whole number.")
    return int(text)
