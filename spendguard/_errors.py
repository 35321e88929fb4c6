"""Exceptions raised by spendguard.

The tree::

    SpendGuardError
    ├── InsufficientCredits          the account (or the guard's budget) cannot pay
    ├── ProviderError                the provider's answer could not be used
    │   ├── AuthenticationError      401 / 403: the key is wrong or lacks access
    │   └── BalanceUnavailable       timeout, connection error, 429 or 5xx after retries
    └── ConfigurationError           (also a ValueError) a missing key, a bad URL, a bad option

Every exception carries its data as attributes and builds its own message; none of them
ever holds an API key. All of them pickle.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ._money import format_amount

__all__ = [
    "AuthenticationError",
    "BalanceUnavailable",
    "ConfigurationError",
    "InsufficientCredits",
    "ProviderError",
    "SpendGuardError",
]


class SpendGuardError(Exception):
    """Root of every error spendguard raises."""


class InsufficientCredits(SpendGuardError):
    """The account cannot pay for the call, so the call was not started.

    Attributes:
        required: What the call needed, in the provider's unit.
        available: What the guard could spend when it decided (may be negative when
            the balance sits below the guard's floor).
        shortfall: ``required - available``, always positive.
        unit: ``"USD"`` or ``"credits"`` (or a custom provider's unit).
        provider: The provider's name, e.g. ``"hyper3d"``.
        reason: Why, when it is not simply the balance (e.g. the guard's budget).
    """

    def __init__(
        self,
        *,
        required: Decimal,
        available: Decimal,
        unit: str,
        provider: str,
        reason: str | None = None,
    ) -> None:
        self.required = required
        self.available = available
        self.shortfall = max(required - available, Decimal(0))
        self.unit = unit
        self.provider = provider
        self.reason = reason
        message = (
            f"{provider}: need {format_amount(required, unit)}, "
            f"{format_amount(available, unit, bare=True)} available, "
            f"short by {format_amount(self.shortfall, unit, bare=True)}"
        )
        if reason:
            message = f"{message} ({reason})"
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


class ConfigurationError(SpendGuardError, ValueError):
    """spendguard was set up wrongly: a missing key, an unsafe URL, a bad option."""


def _rebuild(cls: type[InsufficientCredits], kwargs: dict[str, Any]) -> InsufficientCredits:
    return cls(**kwargs)


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, kwargs: dict[str, Any]
) -> ProviderError:
    return cls(message, **kwargs)
