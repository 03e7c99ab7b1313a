"""The fake fal's webhook side: its own ED25519 keys, the JWKS it publishes, signed (or deliberately bad) callbacks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass
class WebhookFaults:
    """Misbehaviour for the next deliveries; reset it to WebhookFaults() for honest ones."""

    duplicates: int = 0  # send each callback this many extra times
    forge: bool = False  # sign with a key the JWKS never published
    stale_seconds: float = 0.0  # put the timestamp this far in the past
    signature: str | None = None  # send this literal signature header (e.g. "zz" or "")


@dataclass
class Delivery:
    """One callback POST as sent, with the receiver's answer."""

    request_id: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SigningKey:
    private: Ed25519PrivateKey
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def jwk(self) -> dict[str, str]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}


class Signer:
    """fal's webhook keys: one current signing key, optionally older ones still published."""

    def __init__(self) -> None:
        self.current = SigningKey(Ed25519PrivateKey.generate())
        self.published: list[SigningKey] = [self.current]

    def rotate(self, *, keep_old: bool = True) -> None:
        """Sign with a fresh key from now on; the JWKS shows it (and the old ones when keep_old)."""
        self.current = SigningKey(Ed25519PrivateKey.generate())
        self.published = [*self.published, self.current] if keep_old else [self.current]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.published]}

    @staticmethod
    def message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
        return "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()

    def sign(self, message: bytes, *, forged: bool = False) -> str:
        key = Ed25519PrivateKey.generate() if forged else self.current.private
        return key.sign(message).hex()


class WebhookSender:
    """POSTs callbacks the way fal documents them, retrying a failed delivery a few times."""

    def __init__(
        self, signer: Signer, user_id: str, wall_clock: Callable[[], float], retry_delays: tuple[float, ...]
    ) -> None:
        self.signer = signer
        self.user_id = user_id
        self.wall_clock = wall_clock
        self.retry_delays = retry_delays

    def build(self, request_id: str, payload: dict[str, Any], faults: WebhookFaults) -> tuple[dict[str, str], bytes]:
        """Headers and raw body of one callback, signed (or spoiled) per `faults`."""
        body = json.dumps(payload).encode()
        timestamp = str(int(self.wall_clock() - faults.stale_seconds))
        message = self.signer.message(request_id, self.user_id, timestamp, body)
        signature = faults.signature if faults.signature is not None else self.signer.sign(message, forged=faults.forge)
        headers = {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": signature,
        }
        return headers, body

    async def send(
        self, session: aiohttp.ClientSession, url: str, request_id: str, payload: dict[str, Any], faults: WebhookFaults
    ) -> list[Delivery]:
        """Deliver once plus `faults.duplicates` copies; each copy retried on failure like fal does."""
        deliveries = []
        for _ in range(1 + faults.duplicates):
            headers, body = self.build(request_id, payload, faults)
            delivery = Delivery(request_id, url, headers, body)
            for delay in (*self.retry_delays, None):
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        delivery.status, delivery.error = resp.status, None
                        if resp.status < 300:
                            break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    delivery.error = type(exc).__name__
                if delay is None:
                    break
                await asyncio.sleep(delay)
            deliveries.append(delivery)
        return deliveries
