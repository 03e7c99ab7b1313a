"""Pure decisions over a request: is it valid, what does it cost. No I/O here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from bot import messages
from bot.config import KNOWN_PROVIDERS, Settings
from bot.errors import UserError
from bot.ports import AnimateRequest
from providers.base import JobKind

RESOLUTIONS = ("512P", "1024P")
I2V_DURATIONS = (5,)
T2V_DURATIONS = (5, 10)
ASPECT_RATIOS = ("3:2", "1:1", "2:3")


@dataclass(frozen=True)
class Options:
    """The normalised knobs of a job, as stored with it."""

    resolution: str
    duration_s: int
    steps: int | None
    acceleration: str | None
    aspect_ratio: str | None
    provider: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "resolution": self.resolution,
            "duration_s": self.duration_s,
            "steps": self.steps,
            "acceleration": self.acceleration,
            "aspect_ratio": self.aspect_ratio,
            "provider": self.provider,
        }


def normalise(req: AnimateRequest, settings: Settings, provider_names: list[str]) -> Options:
    """Check the request's text and options; raise UserError with one sentence on the first problem."""
    prompt = req.prompt.strip()
    if not prompt:
        raise UserError(messages.EMPTY_PROMPT)
    if len(prompt) > settings.max_prompt_chars:
        raise UserError(messages.prompt_too_long(settings.max_prompt_chars, len(prompt)))
    if "\x00" in prompt:
        raise UserError("The prompt contains characters I can't send on.")
    if req.provider is not None and req.provider not in provider_names:
        known = req.provider in KNOWN_PROVIDERS
        template = messages.PROVIDER_NOT_SET_UP if known else messages.UNKNOWN_PROVIDER
        raise UserError(template.format(name=req.provider, choices=", ".join(provider_names)))
    if req.kind is JobKind.IMAGE_TO_VIDEO:
        if req.image_bytes is None:
            raise UserError(messages.NO_IMAGE)
        resolution = req.resolution.upper()
        if resolution not in RESOLUTIONS:
            raise UserError(messages.bad_choice("Resolution", req.resolution, list(RESOLUTIONS)))
        if req.duration_s not in I2V_DURATIONS:
            raise UserError(messages.bad_choice("Duration", f"{req.duration_s}s", ["5s"]))
        if req.steps is not None and not 1 <= req.steps <= 50:
            raise UserError(messages.bad_steps(1, 50))
        if req.acceleration is not None and req.acceleration not in ("none", "regular", "fast", "ultra_fast"):
            raise UserError(
                messages.bad_choice("Acceleration", req.acceleration, ["none", "regular", "fast", "ultra_fast"])
            )
        return Options(resolution, req.duration_s, req.steps, req.acceleration, None, req.provider)
    if req.duration_s not in T2V_DURATIONS:
        raise UserError(messages.bad_choice("Duration", f"{req.duration_s}s", ["5s", "10s"]))
    aspect = req.aspect_ratio or "3:2"
    if aspect not in ASPECT_RATIOS:
        raise UserError(messages.bad_choice("Aspect ratio", aspect, list(ASPECT_RATIOS)))
    return Options("any", req.duration_s, None, None, aspect, req.provider)


def credit_cost(settings: Settings, kind: JobKind, options: Options) -> int:
    """Credits a job costs the member, from settings (defaults follow provider prices at $0.05 a credit)."""
    if kind is JobKind.IMAGE_TO_VIDEO:
        return settings.cost_i2v_1024p if options.resolution == "1024P" else settings.cost_i2v_512p
    return settings.cost_t2v_10s if options.duration_s == 10 else settings.cost_t2v_5s


def dedupe_key(kind: JobKind, prompt: str, image: bytes | None, options: Options) -> str:
    """Same member + same bytes + same prompt + same options = the same clip."""
    digest = hashlib.sha256()
    digest.update(json.dumps([kind.value, prompt.strip(), options.as_dict()], sort_keys=True).encode())
    digest.update(hashlib.sha256(image or b"").digest())
    return digest.hexdigest()
