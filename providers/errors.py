"""The provider error tree. Every HTTP outcome is translated into one of these in `http.py`.

ProviderError
├── TransientError        retry with backoff (408, 429, 5xx, timeouts, resets, malformed replies)
├── SubmitOutcomeUnknown  the submit may or may not have reached the provider: never resend it
├── JobRejected           the provider refused or failed this job (400/422, FAILED): refund, say why
├── OperatorError         the operator must act (401/403 bad key, 402 out of balance): refund, alert
└── ResultUnusable        the output could not be fetched or is not a usable MP4
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every provider failure; `detail` is safe to log (never holds a secret)."""

    def __init__(self, provider: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{provider}: {detail}")
        self.provider = provider
        self.detail = detail
        self.status = status


class TransientError(ProviderError):
    def __init__(
        self, provider: str, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(provider, detail, status=status)
        self.retry_after = retry_after


class SubmitOutcomeUnknown(ProviderError):
    """The request was sent but no answer came back; the job may exist at the provider."""


class JobRejected(ProviderError):
    """The provider would not (or could not) make this clip. `charged` is False when it says so."""

    def __init__(self, provider: str, detail: str, *, status: int | None = None, charged: bool = False) -> None:
        super().__init__(provider, detail, status=status)
        self.charged = charged


class OperatorError(ProviderError):
    """Bad key, no balance, missing configuration: nothing the member did."""


class InsufficientBalance(OperatorError):
    pass


class ResultUnusable(ProviderError):
    pass


class CircuitOpen(ProviderError):
    """The provider failed repeatedly just now; it is skipped until its breaker half-opens."""
