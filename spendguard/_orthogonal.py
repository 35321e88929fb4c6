"""Orthogonal: prepaid US-dollar credit, a dollar-string balance and a sufficiency check."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import requests

from ._check import Check
from ._errors import AuthenticationError, BalanceUnavailable, ConfigurationError, ProviderError
from ._money import Amount, ceil_int, parse_dollars, parse_number, to_amount
from ._provider import HTTPProvider

SCALES = (100, 100_000)
"""The two scales seen for Orthogonal's ``*Cents`` fields: real cents, or 1/100,000 dollar."""

ASSUMED_SCALE = 100_000
"""Used until the scale is known: it over-asks, which is safe; the other way overspends."""

_SCALE_TOLERANCE = Decimal("0.01")
_TRANSIENT_CODES = frozenset({"RATE_LIMITED", "UPSTREAM_ERROR"})


class Orthogonal(HTTPProvider):
    """Orthogonal's credit API; amounts are US dollars.

    Args:
        api_key: The key; defaults to ``ORTHOGONAL_API_KEY``.
        base_url: Defaults to ``SPENDGUARD_ORTHOGONAL_URL``, else ``https://api.orthogonal.com``.
        timeout: Seconds for each HTTP request.
        session: A ``requests.Session`` to use as is (yours keeps its own retry policy);
            by default one with retries for lookups is created.
        units_per_dollar: The scale of the API's ``*Cents`` fields. ``None`` learns it on
            first use by comparing ``balanceCents`` with the dollar balance (100 or 100,000)
            and assumes 100,000 until it knows.

    Raises:
        ConfigurationError: No key, or an unsafe base URL.
    """

    name = "orthogonal"
    unit = "USD"
    _key_vars = ("ORTHOGONAL_API_KEY",)
    _url_var = "SPENDGUARD_ORTHOGONAL_URL"
    _default_url = "https://api.orthogonal.com"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        units_per_dollar: int | None = None,
    ) -> None:
        super().__init__(api_key, base_url=base_url, timeout=timeout, session=session)
        if units_per_dollar is not None and (
            isinstance(units_per_dollar, bool)
            or not isinstance(units_per_dollar, int)
            or units_per_dollar <= 0
        ):
            raise ConfigurationError(
                f"units_per_dollar must be a positive int (100 or 100000), got {units_per_dollar!r}"
            )
        self._scale: int | None = units_per_dollar

    @property
    def units_per_dollar(self) -> int | None:
        """The ``*Cents`` scale, pinned or learned; ``None`` while unknown."""
        return self._scale

    def fetch_balance(self) -> Decimal:
        """``GET /v1/credits/balance``: the dollar balance (exact, 2 decimals as served).

        Raises:
            ProviderError: The answer is not a balance (and its subclasses, see the tree).
        """
        body = self._call("GET", "/v1/credits/balance")
        value = body.get("balance")
        try:
            if isinstance(value, str):
                return parse_dollars(value)
            return parse_number(value)
        except ValueError as exc:
            raise ProviderError(f"malformed balance: {exc}", provider=self.name) from None

    def check(self, amount: Amount) -> Check:
        """``POST /v1/credits/check``: does the account cover ``amount`` dollars?

        ``amountCents`` is rounded up, and until the scale is known it is asked at
        100,000 units per dollar. ``available`` is ``balanceCents`` in dollars, which is
        more precise than the balance string.
        """
        required = to_amount(amount)
        learning = self._scale is None
        scale = self._scale or ASSUMED_SCALE
        sufficient, balance_cents = self._check_cents(ceil_int(required * scale))
        if learning:
            learned = self._learn_scale(balance_cents)
            if learned is not None and learned != scale:
                scale = learned
                sufficient = sufficient or balance_cents >= ceil_int(required * scale)
        available = Decimal(balance_cents) / scale
        result = Check.of(required, available, self.unit, "remote")
        if result.sufficient and not sufficient:
            return Check(False, required, available, Decimal(0), self.unit, "remote")
        return result

    def _check_cents(self, cents: int) -> tuple[bool, int]:
        body = self._call("POST", "/v1/credits/check", {"amountCents": cents})
        sufficient = body.get("sufficient")
        if not isinstance(sufficient, bool):
            raise ProviderError(
                f"malformed check answer: 'sufficient' is {_kind(sufficient)}, not a boolean",
                provider=self.name,
            )
        try:
            balance_cents = parse_number(body.get("balanceCents"))
        except ValueError as exc:
            raise ProviderError(
                f"malformed check answer: balanceCents: {exc}", provider=self.name
            ) from None
        if balance_cents != balance_cents.to_integral_value():
            raise ProviderError(
                f"malformed check answer: balanceCents {balance_cents} is not whole",
                provider=self.name,
            )
        return sufficient, int(balance_cents)

    def _learn_scale(self, balance_cents: int) -> int | None:
        """Pick the scale under which ``balanceCents`` matches the dollar balance."""
        dollars = self.fetch_balance()
        fits = [
            scale
            for scale in SCALES
            if abs(Decimal(balance_cents) / scale - dollars) <= _SCALE_TOLERANCE
        ]
        if len(fits) != 1:
            return None
        with self._lock:
            self._scale = fits[0]
        return fits[0]

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        body = self._request(method, path, payload)
        if not isinstance(body, dict):
            raise ProviderError(
                f"malformed answer from {path}: expected a JSON object, got {_kind(body)}",
                provider=self.name,
            )
        if body.get("success") is False:
            message = str(body.get("error") or "request failed")[:200]
            code = body.get("code") if isinstance(body.get("code"), str) else None
            error = (
                AuthenticationError
                if code == "UNAUTHORIZED"
                else BalanceUnavailable
                if code in _TRANSIENT_CODES
                else ProviderError
            )
            raise error(f"success: false: {message}", provider=self.name, code=code)
        return body


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"
