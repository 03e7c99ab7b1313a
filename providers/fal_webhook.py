"""fal webhook authenticity: ED25519 signatures checked against fal's published JWKS (PROTOCOLS §3)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from providers.errors import ProviderError, TransientError
from providers.http import HttpClient

log = logging.getLogger(__name__)

JWKS_TTL_SECONDS = 24 * 3600  # fal's docs: cache the key set for at most a day
JWKS_MIN_REFETCH_SECONDS = 60.0  # a flood of forged callbacks must not turn into a flood of JWKS fetches
TIMESTAMP_TOLERANCE_SECONDS = 300
SIGNATURE_BYTES = 64

HEADER_REQUEST_ID = "x-fal-webhook-request-id"
HEADER_USER_ID = "x-fal-webhook-user-id"
HEADER_TIMESTAMP = "x-fal-webhook-timestamp"
HEADER_SIGNATURE = "x-fal-webhook-signature"


def parse_jwks(body: Any) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS document; keys of other types or broken keys are skipped."""
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        return ()
    keys: list[Ed25519PublicKey] = []
    for jwk in body["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            continue
    return tuple(keys)


class JwksCache:
    """fal's public keys, fetched lazily, kept for a day, refetched at most once a minute."""

    def __init__(self, http: HttpClient, url: str, *, clock: Callable[[], float]) -> None:
        self._http = http
        self._url = url
        self._clock = clock
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < JWKS_TTL_SECONDS

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= JWKS_MIN_REFETCH_SECONDS

    async def keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The cached keys, fetching them first when the cache is empty or older than a day."""
        if self._fresh():
            return self._keys
        async with self._lock:
            # Another callback may have fetched while this one waited for the lock.
            if not self._fresh() and self._may_fetch():
                await self._fetch()
            return self._keys if self._fresh() else ()

    async def refresh(self) -> tuple[Ed25519PublicKey, ...] | None:
        """Refetched keys after a failed verification, or None when the last fetch was under a minute ago."""
        async with self._lock:
            if not self._may_fetch():
                return None
            await self._fetch()
            return self._keys if self._fresh() else ()

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            # No Authorization header: the key set is public and the fal key must not travel to another host.
            resp = await self._http.call("GET", self._url, headers={"Accept": "application/json"}, ok=(200,))
        except ProviderError as exc:
            log.warning("fal JWKS fetch failed: %s", exc.detail)
            return
        keys = parse_jwks(resp.body)
        if not keys:
            log.warning("fal JWKS held no usable Ed25519 key")
            return
        self._keys, self._fetched_at = keys, self._clock()


class SignatureVerifier:
    """Checks the four X-Fal-Webhook-* headers against the raw body; returns the signed request id."""

    def __init__(self, jwks: JwksCache, *, clock: Callable[[], float], user_id: str | None = None) -> None:
        self._jwks = jwks
        self._clock = clock
        self._user_id = user_id

    async def verify(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """The request id the signature covers, or None when the callback is forged, stale or malformed."""
        lower = {key.lower(): value for key, value in headers.items()}
        request_id = lower.get(HEADER_REQUEST_ID)
        user_id = lower.get(HEADER_USER_ID)
        timestamp = lower.get(HEADER_TIMESTAMP)
        signature_hex = lower.get(HEADER_SIGNATURE)
        if not (request_id and user_id and timestamp and signature_hex):
            log.warning("fal webhook without its signature headers ignored")
            return None
        if self._user_id is not None and user_id != self._user_id:
            log.warning("fal webhook for another fal user ignored")
            return None
        try:
            sent_at = int(timestamp)
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            log.warning("fal webhook with a malformed timestamp or signature ignored")
            return None
        if abs(self._clock() - sent_at) > TIMESTAMP_TOLERANCE_SECONDS:
            log.warning("fal webhook for %s ignored: timestamp %ss off", request_id, int(self._clock() - sent_at))
            return None
        if len(signature) != SIGNATURE_BYTES:
            log.warning("fal webhook with a signature of the wrong length ignored")
            return None
        message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
        keys = await self._jwks.keys()
        if not keys:
            # Not a verdict on this callback: we cannot check anything until fal's key set is reachable again.
            raise TransientError("fal", "fal's webhook signing keys could not be fetched; cannot verify now")
        if _any_key_verifies(keys, signature, message):
            return request_id
        # fal may have rotated its keys since the cache was filled: look once more, rate-limited.
        fresh = await self._jwks.refresh()
        if fresh and _any_key_verifies(fresh, signature, message):
            return request_id
        log.warning("fal webhook for %s ignored: signature does not verify", request_id)
        return None


def _any_key_verifies(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False
