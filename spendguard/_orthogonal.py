"""Orthogonal: prepaid US-dollar credit, a dollar-string balance and a sufficiency check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any

import requests
from cachetools import TTLCache

from ._answer import kind, money, text
from ._check import Check
from ._errors import AuthenticationError, BalanceUnavailable, ConfigurationError, ProviderError
from ._http import DEFAULT_RETRIES, conceal
from ._money import CONTEXT, Amount, ceil_int, to_amount
from ._provider import HTTPProvider
from .pricing import parse_orthogonal_price

SCALES = (100, 100_000)
"""The two scales seen for Orthogonal's ``*Cents`` fields: real cents, or 1/100,000 dollar."""

ASSUMED_SCALE = 100_000
"""Used until the scale is known: it over-asks, which is safe; the other way overspends."""

# How a dollar balance may have been rounded from the exact one: to nearest, or down.
_DISPLAY_ROUNDINGS = (ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_DOWN, ROUND_FLOOR)
_FINEST_DISPLAY = -20
_TRANSIENT_CODES = frozenset({"RATE_LIMITED", "UPSTREAM_ERROR"})
_PRICE_CACHE_SIZE = 1024
_NOT_CACHED: Any = object()


class Orthogonal(HTTPProvider):
    """Orthogonal's credit API; amounts are US dollars.

    Args:
        api_key: The key; defaults to ``ORTHOGONAL_API_KEY``.
        base_url: Defaults to ``SPENDGUARD_ORTHOGONAL_URL``, else ``https://api.orthogonal.com``.
        timeout: Seconds for each attempt in all: connect, status line, headers and body
            (a timer cuts an answer that takes longer, however it trickles in).
        session: A ``requests.Session`` to use as is (yours keeps its own retry policy);
            by default one with retries for lookups is created.
        retries: Retries after a connection error, timeout, 429 or 5xx, with exponential
            backoff and jitter, honouring ``Retry-After``; no wait is longer than ``timeout``
            (nor 10 s). A lookup therefore ends within ``timeout × (2 × retries + 1)``
            seconds.
        units_per_dollar: The scale of the API's ``*Cents`` fields: 100 or 100000 (the
            two the documentation shows). ``None`` learns it on first use by finding which
            of the two turns ``balanceCents`` into the dollar balance as served (rounded to
            its decimals), and assumes 100,000 until it knows. A pinned scale is checked
            once against the dollar balance too. Providers with different settings never
            share a balance snapshot (see :attr:`account_id`).
        price_ttl: Seconds an endpoint's price from :meth:`price` is trusted (one hour).
        clock: Monotonic seconds for the price cache; ``time.monotonic`` by default.

    Raises:
        ConfigurationError: No key, an unsafe base URL, or ``units_per_dollar`` other
            than ``None``, 100 or 100000.
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
        # Only the masked key stays in this frame's locals, for any traceback.
        key = conceal(api_key)
        del api_key
        if units_per_dollar is not None and (
            type(units_per_dollar) is not int or units_per_dollar not in SCALES
        ):
            raise ConfigurationError(
                f"units_per_dollar must be None (learn it), 100 or 100000, got {units_per_dollar!r}"
            )
        super().__init__(key, base_url=base_url, timeout=timeout, session=session, retries=retries)
        if isinstance(price_ttl, bool) or not isinstance(price_ttl, int | float) or price_ttl < 0:
            raise ConfigurationError(
                f"price_ttl must be a non-negative number of seconds, got {price_ttl!r}"
            )
        self._prices: TTLCache[tuple[str, str], Decimal | None] = TTLCache(
            maxsize=_PRICE_CACHE_SIZE, ttl=price_ttl, timer=clock or time.monotonic
        )
        self._prices_lock = threading.Lock()
        self._price_lookup_lock = threading.Lock()
        self._scale: int | None = None if units_per_dollar is None else int(units_per_dollar)
        self._pinned = units_per_dollar is not None
        self._pin_checked = False
        self._account_id = f"{self._account_id}:{self._scale or 'learned'}"

    @property
    def account_id(self) -> str:
        """``orthogonal:base_url:sha256(key)[:16]:scale``, where the scale is the pinned
        ``units_per_dollar`` or ``learned``: identifies the account without the key, and
        keeps providers that read ``*Cents`` differently from sharing a snapshot."""
        return self._account_id

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
        return money(body.get("balance"), field="balance", provider=self.name, dollars=True)

    def check(self, amount: Amount) -> Check:
        """``POST /v1/credits/check``: does the account cover ``amount`` dollars?

        ``amountCents`` is rounded up, and until the scale is known it is asked at
        100,000 units per dollar. ``available`` is ``balanceCents`` in dollars, which is
        more precise than the balance string. While the scale is unknown, the first
        checks also fetch the dollar balance to learn it; when that lookup fails, an
        approval at the assumed scale (which over-asks) still stands.

        Raises:
            ConfigurationError: The pinned ``units_per_dollar`` contradicts the dollar
                balance (the other scale fits it).
            ProviderError: The answer is unusable (and its subclasses, see the tree).
        """
        required = to_amount(amount)
        scale = self._scale or ASSUMED_SCALE
        sufficient, balance_cents = self._check_cents(ceil_int(CONTEXT.multiply(required, scale)))
        if self._scale is None:
            scale, sufficient = self._learn_scale(required, sufficient, balance_cents)
        elif self._pinned and not self._pin_checked:
            self._check_pin(balance_cents)
        available = CONTEXT.divide(Decimal(balance_cents), scale)
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
        if cached is _NOT_CACHED:
            with self._price_lookup_lock:
                cached = self._look_up_price(key)
        return cached  # type: ignore[no-any-return]

    def _look_up_price(self, key: tuple[str, str]) -> Decimal | None:
        """The price of ``key`` from the cache, or else from ``POST /v1/details`` (then
        cached); the caller holds the lookup lock."""
        with self._prices_lock:
            cached = self._prices.get(key, _NOT_CACHED)
        if cached is not _NOT_CACHED:
            return cached  # type: ignore[no-any-return]
        api, path = key
        body = self._call("POST", "/v1/details", {"api": api, "path": path})
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, dict):
            raise ProviderError(
                f"malformed details answer: 'endpoint' is {kind(endpoint)}, not an object",
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
                f"malformed check answer: 'sufficient' is {kind(sufficient)}, not a boolean",
                provider=self.name,
            )
        balance_cents = money(
            body.get("balanceCents"), field="check answer: balanceCents", provider=self.name
        )
        if balance_cents != balance_cents.to_integral_value(context=CONTEXT):
            raise ProviderError(
                f"malformed check answer: balanceCents {balance_cents} is not whole",
                provider=self.name,
            )
        return sufficient, int(balance_cents)

    def _learn_scale(
        self, required: Decimal, sufficient: bool, balance_cents: int
    ) -> tuple[int, bool]:
        """The scale to read ``balanceCents`` with, and the verdict at that scale.

        Learns the scale when exactly one fits the dollar balance. Otherwise (a lookup
        that fails, an ambiguous or contradictory reading) it keeps the assumed scale and
        the endpoint's verdict at it: that verdict over-asks, so an approval is sound.
        When the lookup is unavailable, an approval stands and a refusal becomes the
        lookup's error (it may be wrong at the real scale).
        """
        try:
            dollars = self.fetch_balance()
        except BalanceUnavailable:
            if sufficient:
                return ASSUMED_SCALE, True
            raise
        fits = [scale for scale in SCALES if _fits(balance_cents, scale, dollars)]
        if len(fits) != 1:
            return ASSUMED_SCALE, sufficient
        learned = fits[0]
        with self._lock:
            self._scale = learned
        if learned == ASSUMED_SCALE:
            return learned, sufficient
        # The endpoint judged an over-asked amount; at the real scale the numbers decide.
        needed = ceil_int(CONTEXT.multiply(required, learned))
        return learned, sufficient or balance_cents >= needed

    def _check_pin(self, balance_cents: int) -> None:
        """Compare the pinned scale with the dollar balance once; a lookup that fails or a
        reading that fits neither scale (the balance moved between the two requests) is
        tried again on the next check."""
        try:
            dollars = self.fetch_balance()
        except ProviderError:
            return
        scale = self._scale
        assert scale is not None
        if _fits(balance_cents, scale, dollars):
            self._pin_checked = True
            return
        other = [s for s in SCALES if s != scale and _fits(balance_cents, s, dollars)]
        if other:
            raise ConfigurationError(
                f"orthogonal: units_per_dollar={scale} is pinned, but balanceCents "
                f"{balance_cents} matches the balance of ${dollars} only at {other[0]} units "
                "per dollar; pin that, or pass None to learn it"
            )

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        body = self._request(method, path, payload)
        if not isinstance(body, dict):
            raise ProviderError(
                f"malformed answer from {path}: expected a JSON object, got {kind(body)}",
                provider=self.name,
            )
        if body.get("success") is False:
            message = text(body.get("error") or "request failed", None)
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


def _fits(balance_cents: int, scale: int, dollars: Decimal) -> bool:
    """Whether ``balance_cents`` at ``scale`` is ``dollars`` once rounded (to nearest or
    down) to the decimals ``dollars`` is served with."""
    served = dollars.as_tuple().exponent
    exponent = max(min(served, 0), _FINEST_DISPLAY) if isinstance(served, int) else 0
    step = Decimal(1).scaleb(exponent)
    exact = CONTEXT.divide(Decimal(balance_cents), scale)
    try:
        return any(
            exact.quantize(step, rounding=rounding, context=CONTEXT) == dollars
            for rounding in _DISPLAY_ROUNDINGS
        )
    except ArithmeticError:
        return False
