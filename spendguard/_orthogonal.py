"""Orthogonal: prepaid US-dollar credit, a dollar-string balance and a sufficiency check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import requests
from cachetools import TTLCache

from ._check import Check
from ._errors import AuthenticationError, BalanceUnavailable, ConfigurationError, ProviderError
from ._http import DEFAULT_RETRIES
from ._money import Amount, ceil_int, parse_dollars, parse_number, to_amount
from ._provider import HTTPProvider
from .pricing import parse_orthogonal_price

SCALES = (100, 100_000)
"""The two scales seen for Orthogonal's ``*Cents`` fields: real cents, or 1/100,000 dollar."""

ASSUMED_SCALE = 100_000
"""Used until the scale is known: it over-asks, which is safe; the other way overspends."""

_SCALE_TOLERANCE = Decimal("0.01")
_TRANSIENT_CODES = frozenset({"RATE_LIMITED", "UPSTREAM_ERROR"})
_PRICE_CACHE_SIZE = 1024
_NOT_CACHED: Any = object()


class Orthogonal(HTTPProvider):
    """Orthogonal's credit API; amounts are US dollars.

    Args:
        api_key: The key; defaults to ``ORTHOGONAL_API_KEY``.
        base_url: Defaults to ``SPENDGUARD_ORTHOGONAL_URL``, else ``https://api.orthogonal.com``.
        timeout: Seconds for each HTTP request (connect and read, each attempt).
        session: A ``requests.Session`` to use as is (yours keeps its own retry policy);
            by default one with retries for lookups is created.
        retries: Retries after a connection error, timeout, 429 or 5xx, with exponential
            backoff and jitter, honouring ``Retry-After`` up to 10 s. A lookup therefore
            takes at most about ``timeout × (retries + 1)`` plus the backoff.
        units_per_dollar: The scale of the API's ``*Cents`` fields. ``None`` learns it on
            first use by comparing ``balanceCents`` with the dollar balance (100 or 100,000)
            and assumes 100,000 until it knows.
        price_ttl: Seconds an endpoint's price from :meth:`price` is trusted (one hour).
        clock: Monotonic seconds for the price cache; ``time.monotonic`` by default.

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
        price_ttl: float = 3600.0,
        clock: Callable[[], float] | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        super().__init__(
            api_key, base_url=base_url, timeout=timeout, session=session, retries=retries
        )
        if isinstance(price_ttl, bool) or not isinstance(price_ttl, int | float) or price_ttl < 0:
            raise ConfigurationError(
                f"price_ttl must be a non-negative number of seconds, got {price_ttl!r}"
            )
        self._prices: TTLCache[tuple[str, str], Decimal | None] = TTLCache(
            maxsize=_PRICE_CACHE_SIZE, ttl=price_ttl, timer=clock or time.monotonic
        )
        self._prices_lock = threading.Lock()
        self._price_lookup_lock = threading.Lock()
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

    def price(self, api: str, path: str) -> Decimal | None:
        """``POST /v1/details``: what one call of ``path`` on ``api`` costs, in dollars.

        Answers are cached per ``(api, path)`` for ``price_ttl`` seconds (an hour by
        default), so pricing a call usually makes no request; failures are not cached.
        Lookups of unknown prices run one at a time, so a burst asks once.

        Args:
            api: The API's slug, e.g. ``"sim-search"``.
            path: The endpoint's path on that API, e.g. ``"/search"``.

        Returns:
            The price, or ``None`` when it is ``"dynamic"`` (known only after the call).

        Raises:
            ConfigurationError: ``api`` or ``path`` is empty.
            ProviderError: The answer has no usable price (and its subclasses, see the tree).
        """
        if not api or not path or not isinstance(api, str) or not isinstance(path, str):
            raise ConfigurationError(f"api and path must be non-empty str, got {api!r}, {path!r}")
        key = (api, path)
        with self._prices_lock:
            cached = self._prices.get(key, _NOT_CACHED)
        if cached is not _NOT_CACHED:
            return cached  # type: ignore[no-any-return]
        with self._price_lookup_lock:
            with self._prices_lock:
                cached = self._prices.get(key, _NOT_CACHED)
            if cached is not _NOT_CACHED:
                return cached  # type: ignore[no-any-return]
            body = self._call("POST", "/v1/details", {"api": api, "path": path})
            endpoint = body.get("endpoint")
            if not isinstance(endpoint, dict):
                raise ProviderError(
                    f"malformed details answer: 'endpoint' is {_kind(endpoint)}, not an object",
                    provider=self.name,
                )
            price = parse_orthogonal_price(endpoint.get("price"))
            with self._prices_lock:
                self._prices[key] = price
        return price

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
