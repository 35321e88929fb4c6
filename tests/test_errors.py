"""The exception tree: data, messages and pickling."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest

import spendguard as sg


def test_insufficient_credits_message_and_data() -> None:
    """The message says what is needed, what is available and the shortfall."""
    error = sg.InsufficientCredits(
        required=Decimal(2), available=Decimal("1.5"), unit="credits", provider="hyper3d"
    )
    assert str(error) == "hyper3d: need 2 credits, 1.5 available, short by 0.5"
    assert error.shortfall == Decimal("0.5")
    assert isinstance(error, sg.SpendGuardError)


def test_insufficient_credits_in_dollars_with_reason() -> None:
    """Dollar amounts render with a $ and the reason is appended."""
    error = sg.InsufficientCredits(
        required=Decimal("0.1"),
        available=Decimal("-0.25"),
        unit="USD",
        provider="orthogonal",
        reason="budget",
    )
    assert str(error) == "orthogonal: need $0.10, -$0.25 available, short by $0.35 (budget)"


@pytest.mark.parametrize(
    "error",
    [
        sg.InsufficientCredits(
            required=Decimal(1), available=Decimal(0), unit="USD", provider="x", reason="r"
        ),
        sg.ProviderError("bad", provider="hyper3d", status=502, code="UPSTREAM_ERROR"),
        sg.AuthenticationError("HTTP 401: no", provider="orthogonal", status=401),
        sg.BalanceUnavailable("timed out", provider="orthogonal"),
        sg.ConfigurationError("no key"),
    ],
)
def test_errors_pickle(error: Exception) -> None:
    """Every error survives pickling with its data (for multiprocessing and task queues)."""
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_tree() -> None:
    """The documented hierarchy holds."""
    assert issubclass(sg.AuthenticationError, sg.ProviderError)
    assert issubclass(sg.BalanceUnavailable, sg.ProviderError)
    assert issubclass(sg.ProviderError, sg.SpendGuardError)
    assert issubclass(sg.ConfigurationError, ValueError)
    assert issubclass(sg.ConfigurationError, sg.SpendGuardError)
