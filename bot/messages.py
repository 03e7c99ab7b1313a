"""Every sentence a member reads, in one place, shared by all front-ends."""

from __future__ import annotations

HELP = (
    "Send a picture with /animate and a prompt, and I'll turn it into a 5-second video.\n"
    "  /animate IMAGE PROMPT   animate an image (a file path in this shell)\n"
    "  /video PROMPT           make a video from text alone\n"
    "  /balance                your credits\n"
    "  /help                   this message"
)

EMPTY_PROMPT = "Please add a prompt describing the motion you want."
NO_IMAGE = "Please attach an image to animate."
UNKNOWN_PROVIDER = "I don't know the provider {name!r}; choose one of: {choices}."
PROVIDER_NOT_SET_UP = "The {name} provider isn't set up on this bot; choose one of: {choices}."
PROVIDER_CANNOT = "No configured provider can make that ({what})."


def prompt_too_long(limit: int, got: int) -> str:
    return f"That prompt is {got:,} characters; please keep it under {limit:,}."


def bad_choice(what: str, value: object, choices: list[str]) -> str:
    return f"{what} {value!r} isn't available; choose one of: {', '.join(choices)}."


def bad_steps(low: int, high: int) -> str:
    return f"Steps must be a whole number from {low} to {high}."


def not_enough_credits(balance: int, cost: int) -> str:
    return f"This clip costs {cost} credit{'s' if cost != 1 else ''} and you have {balance}. Nothing was charged."


BUDGET_REACHED = "The bot has reached today's spending limit set by its operator. Please try again tomorrow."
DUPLICATE = "I'm already making that exact clip for you (job {job_id}); you'll only be charged once."
ACCEPTED = "Job {job_id} accepted: {cost} credit{s} held. Balance {balance}."

QUEUED = "Queued{pos} · {elapsed}"
PROCESSING = "Animating · {elapsed}"
FETCHING = "Almost done: fetching the video · {elapsed}"
DONE = "Here is your clip ({cost} credit{s}). Balance {balance}."

REFUND_SUFFIX = " Your {cost} credit{s} were returned."
REJECTED = "The video service could not make this clip: {reason}."
OPERATOR_PROBLEM = "The video service is unavailable right now (not your fault); the operator has been alerted."
PROVIDERS_DOWN = "The video services are busy or unavailable right now; please try again in a few minutes."
UNKNOWN_OUTCOME = "I lost contact with the video service while starting your clip and could not confirm it."
RESULT_UNUSABLE = "The video service returned a clip I could not use."
EXPIRED = "Your clip took too long and was cancelled."
CANCELLED = "Job {job_id} was cancelled."
DELIVERY_FAILED = "I couldn't send the video here."
INTERNAL = "Something went wrong on my side (not your fault); the operator has been alerted."


def plural(n: int) -> str:
    return "" if n == 1 else "s"


def elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"
