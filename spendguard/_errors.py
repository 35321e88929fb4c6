"""Exceptions raised by spendguard.

The tree::

    SpendGuardError
    ├── InsufficientCredits          the account (or the guard's budget) cannot pay
    ├── ProviderError                the provider's answer could not be used
    │   ├── AuthenticationError      401 / 403: the key is wrong or lacks access
    │   └── BalanceUnavailable       timeout, connection error, 429 or 5xx after retries
    ├── LedgerError                  the shared ledger (SQLite, Redis) cannot be used
    ├── ReentryError                 (also a RuntimeError) a balance lookup called back into
    │                                the guard that was looking it up
    └── ConfigurationError           (also a ValueError) a missing key, a bad URL, a bad option
        └── UnknownPrice             (spendguard.pricing) a tier or addon with no known price,
                                     or a billable request whose price cannot be read

Every exception carries its data as attributes and builds its own message; none of them
ever holds an API key. All of them pickle.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ._money import CONTEXT, format_amount, tidy

_ZERO = Decimal(0)

__all__ = [
    "AuthenticationError",
    "BalanceUnavailable",
    "ConfigurationError",
    "InsufficientCredits",
    "LedgerError",
    "ProviderError",
    "ReentryError",
    "SpendGuardError",
]


class SpendGuardError(Exception):
    """Root of every error spendguard raises."""


class InsufficientCredits(SpendGuardError):
    """The account cannot pay for the call, so the call was not started.

    Attributes:
        required: What the call needed, in the provider's unit.
        available: What the guard could spend when it decided (may be negative when
            the balance sits below the guard's floor); ``None`` when it is unknown (a
            provider's 402 answer, after which the balance could not be looked up).
        shortfall: ``required - available``, always positive; ``None`` when
            ``available`` is unknown.
        unit: ``"USD"`` or ``"credits"`` (or a custom provider's unit).
        provider: The provider's name, e.g. ``"hyper3d"``.
        reason: Why, when it is not simply the balance (e.g. the guard's budget).
        affordable: For a batch, how many of its first items would fit; ``None`` otherwise.
    """

    def __init__(
        self,
        *,
        required: Decimal,
        available: Decimal | None,
        unit: str,
        provider: str,
        reason: str | None = None,
        affordable: int | None = None,
    ) -> None:
        self.required = required
        self.available = available
        if available is None:
            self.shortfall: Decimal | None = None
        else:
            difference = CONTEXT.subtract(required, available)
            self.shortfall = tidy(difference) if difference > 0 else _ZERO
        self.unit = unit
        self.provider = provider
        self.reason = reason
        self.affordable = affordable
        if available is None or self.shortfall is None:
            message = f"{provider}: need {format_amount(required, unit)}, available unknown"
        else:
            message = (
                f"{provider}: need {format_amount(required, unit)}, "
                f"{format_amount(available, unit, bare=True)} available, "
                f"short by {format_amount(self.shortfall, unit, bare=True)}"
            )
        if reason:
            message = f"{message} ({reason})"
        if affordable is not None:
            message = f"{message}; {_fitting(affordable)}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                {
                    "required": self.required,
                    "available": self.available,
                    "unit": self.unit,
                    "provider": self.provider,
                    "reason": self.reason,
                    "affordable": self.affordable,
                },
            ),
        )


class ProviderError(SpendGuardError):
    """The provider's answer could not be used (malformed, refused or missing).

    Attributes:
        provider: The provider's name.
        status: The HTTP status code, when there was a response.
        code: The provider's own error code (e.g. ``"RATE_LIMITED"``), when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.status = status
        self.code = code
        super().__init__(f"{provider}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_provider_error,
            (
                type(self),
                self.message,
                {"provider": self.provider, "status": self.status, "code": self.code},
            ),
        )


class AuthenticationError(ProviderError):
    """The provider rejected the API key (HTTP 401 or 403)."""


class BalanceUnavailable(ProviderError):
    """The balance could not be had: timeout, connection error, 429 or 5xx after retries."""


class LedgerError(SpendGuardError):
    """The shared ledger could not be used: Redis is down or slow or lost its state, or the
    SQLite file is locked, corrupt, read-only or gone.

    The call was not started (unless the ledger's ``on_ledger_error="local"`` let this
    process decide on its own).

    Attributes:
        message: What went wrong.
        ledger: The ledger, described without any password (e.g. ``redis://host:6379/0``).
        retry_after: Seconds after which the ledger expects to admit again, when known
            (while it recovers from lost state); ``None`` otherwise.
    """

    def __init__(self, message: str, *, ledger: str, retry_after: float | None = None) -> None:
        self.message = message
        self.ledger = ledger
        self.retry_after = retry_after
        text = f"{ledger}: {message}"
        if retry_after is not None:
            text = f"{text} (retry in {retry_after:.1f} s)"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_ledger_error,
            (type(self), self.message, {"ledger": self.ledger, "retry_after": self.retry_after}),
        )


class ReentryError(SpendGuardError, RuntimeError):
    """A balance lookup asked the guard for a decision while the guard waited for that
    lookup: a custom provider, or a log handler on ``spendguard``, called back into it.

    Waiting would never end, so the inner call raises this instead. Decide outside the
    provider's methods and outside log handlers.
    """


class ConfigurationError(SpendGuardError, ValueError):
    """spendguard was set up wrongly: a missing key, an unsafe URL, a bad option."""


def _fitting(affordable: int) -> str:
    if affordable == 0:
        return "not even the first item fits"
    if affordable == 1:
        return "only the first item fits"
    return f"only the first {affordable} items fit"


def _rebuild(cls: type[InsufficientCredits], kwargs: dict[str, Any]) -> InsufficientCredits:
    return cls(**kwargs)


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, kwargs: dict[str, Any]
) -> ProviderError:
    return cls(message, **kwargs)


def _rebuild_ledger_error(
    cls: type[LedgerError], message: str, kwargs: dict[str, Any]
) -> LedgerError:
    return cls(message, **kwargs)
