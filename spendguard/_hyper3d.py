"""Hyper3D Rodin: prepaid credits and a free balance endpoint."""

from __future__ import annotations

from decimal import Decimal

import requests

from ._answer import money, text
from ._check import Check
from ._errors import ProviderError
from ._http import DEFAULT_RETRIES, conceal
from ._money import Amount, to_amount
from ._provider import HTTPProvider

_SUCCESS_ERRORS = (None, "", "OK")


class Hyper3D(HTTPProvider):
    """Hyper3D Rodin's balance API; amounts are credits (fractional balances allowed).

    Args:
        api_key: The key; defaults to ``HYPER3D_API_KEY``, then ``RODIN_API_KEY``.
        base_url: Defaults to ``SPENDGUARD_HYPER3D_URL``, else ``https://api.hyper3d.com``.
        timeout: Seconds for each attempt in all: connect, status line, headers and body
            (a timer cuts an answer that takes longer, however it trickles in).
        session: A ``requests.Session`` to use as is; by default one with retries for
            lookups is created.
        retries: Retries after a connection error, timeout, 429 or 5xx, with exponential
            backoff and jitter, honouring ``Retry-After``; no wait is longer than ``timeout``
            (nor 10 s). A lookup therefore ends within ``timeout × (2 × retries + 1)``
            seconds.

    Raises:
        ConfigurationError: No key, or an unsafe base URL.
    """

    name = "hyper3d"
    unit = "credits"
    _key_vars = ("HYPER3D_API_KEY", "RODIN_API_KEY")
    _url_var = "SPENDGUARD_HYPER3D_URL"
    _default_url = "https://api.hyper3d.com"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        # Only the masked key stays in this frame's locals, for any traceback.
        key = conceal(api_key)
        del api_key
        super().__init__(key, base_url=base_url, timeout=timeout, session=session, retries=retries)

    def fetch_balance(self) -> Decimal:
        """``GET /api/v2/check_balance``: the balance in credits, exactly (``12.5`` stays 12.5).

        Raises:
            ProviderError: The answer is not a balance (and its subclasses, see the tree).
        """
        body = self._request("GET", "/api/v2/check_balance")
        if not isinstance(body, dict):
            raise ProviderError(
                f"malformed answer: expected a JSON object, got {type(body).__name__}",
                provider=self.name,
            )
        error = body.get("error")
        if error not in _SUCCESS_ERRORS:
            message = body.get("message")
            detail = f": {text(message, None)}" if message else ""
            raise ProviderError(
                f"error {text(error, None, 60)!r}{detail}",
                provider=self.name,
                code=text(error, None, 60) if isinstance(error, str) else None,
            )
        return money(body.get("balance"), field="balance", provider=self.name)

    def check(self, amount: Amount) -> Check:
        """Compare ``amount`` credits with a fresh balance (Hyper3D has no check endpoint)."""
        required = to_amount(amount)
        return Check.of(required, self.fetch_balance(), self.unit, "remote")
