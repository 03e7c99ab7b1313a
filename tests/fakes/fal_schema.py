"""Input validation for the two fal models the bot uses, per the seed schemas, in fal's 422 error shape.

Image-to-video: seed 001 (schema) and seed 000 (steps 1-40, duration fixed at 5 s).
Text-to-video distill: seed 004 (aspect_ratio, duration 5s|10s, resolution only as W x H).
Unknown fields are refused so that an adapter sending a misspelt or foreign field is caught; the real
service would most likely ignore them silently (pydantic's default), which hides such bugs.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

I2V_MODEL = "fal-ai/kandinsky5-pro/image-to-video"
T2V_MODEL = "fal-ai/kandinsky5/text-to-video/distill"
MODELS = (I2V_MODEL, T2V_MODEL)

IMAGE_MIMES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/avif")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.DOTALL)
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")

Error = dict[str, Any]


def _err(field: str, msg: str, kind: str, value: Any = None, **ctx: Any) -> Error:
    error: Error = {"loc": ["body", field], "msg": msg, "type": kind}
    if value is not None:
        error["input"] = value
    if ctx:
        error["ctx"] = ctx
    return error


def _enum(body: dict[str, Any], field: str, allowed: tuple[str, ...], errors: list[Error]) -> None:
    if field not in body:
        return
    value = body[field]
    if value not in allowed:
        expected = " or ".join(f"'{a}'" for a in allowed) if len(allowed) <= 2 else ", ".join(map(repr, allowed))
        errors.append(_err(field, f"Input should be {expected}", "enum", value, expected=expected))


def _required_string(body: dict[str, Any], field: str, errors: list[Error]) -> bool:
    if field not in body:
        errors.append(_err(field, "Field required", "missing"))
        return False
    if not isinstance(body[field], str):
        errors.append(_err(field, "Input should be a valid string", "string_type", body[field]))
        return False
    return True


def _image_url(value: str, errors: list[Error]) -> None:
    if value.startswith(("https://", "http://")):
        return
    match = _DATA_URI.match(value)
    if match is None:
        errors.append(_err("image_url", "Image URL must be a public http(s) URL or a base64 data URI", "url_type"))
        return
    if match["mime"].lower() not in IMAGE_MIMES:
        errors.append(
            _err("image_url", f"Unsupported image format {match['mime']}", "unsupported_image_format", match["mime"])
        )
        return
    try:
        raw = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        errors.append(_err("image_url", "The data URI is not valid base64", "image_load_error"))
        return
    is_webp = raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    is_avif = raw[4:12] in (b"ftypavif", b"ftypavis")
    if not (raw.startswith(_MAGIC) or is_webp or is_avif):
        errors.append(_err("image_url", "Could not load the image: unknown file format", "image_load_error"))


def validate(model: str, body: Any) -> list[Error]:
    """fal-style validation errors for `body` sent to `model`; empty when the input is acceptable."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    errors: list[Error] = []
    if _required_string(body, "prompt", errors) and not body["prompt"].strip():
        errors.append(_err("prompt", "Prompt must not be empty", "value_error"))
    if model == I2V_MODEL:
        allowed = {"prompt", "image_url", "resolution", "duration", "num_inference_steps", "acceleration"}
        if _required_string(body, "image_url", errors):
            _image_url(body["image_url"], errors)
        _enum(body, "resolution", ("512P", "1024P"), errors)
        _enum(body, "duration", ("5s",), errors)
        _enum(body, "acceleration", ("none", "regular"), errors)
        if "num_inference_steps" in body:
            steps = body["num_inference_steps"]
            if not isinstance(steps, int) or isinstance(steps, bool):
                errors.append(_err("num_inference_steps", "Input should be a valid integer", "int_type", steps))
            elif steps < 1:
                errors.append(
                    _err(
                        "num_inference_steps",
                        "Input should be greater than or equal to 1",
                        "greater_than_equal",
                        steps,
                        ge=1,
                    )
                )
            elif steps > 40:
                errors.append(
                    _err(
                        "num_inference_steps",
                        "Input should be less than or equal to 40",
                        "less_than_equal",
                        steps,
                        le=40,
                    )
                )
    else:
        allowed = {"prompt", "resolution", "aspect_ratio", "duration"}
        _enum(body, "aspect_ratio", ("3:2", "1:1", "2:3"), errors)
        _enum(body, "duration", ("5s", "10s"), errors)
        _enum(body, "resolution", ("768x512", "512x512", "512x768"), errors)
    for extra in sorted(set(body) - allowed):
        errors.append(_err(extra, "Extra inputs are not permitted", "extra_forbidden", body[extra]))
    return errors
