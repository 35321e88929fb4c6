"""What a provider is (a Protocol anyone can satisfy) and the base of the bundled HTTP ones."""

from __future__ import annotations

import hashlib
import posixpath
import threading
from decimal import Decimal
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import requests

from ._answer import Secret, redact, scrub_http_logs
from ._check import Check
from ._errors import ConfigurationError
from ._http import (
    DEFAULT_RETRIES,
    build_session,
    request_json,
    resolve_base_url,
    resolve_key,
)


@runtime_checkable
class Provider(Protocol):
    """The interface :class:`~spendguard.SpendGuard` needs from a provider.

    Write your own by defining these members; no base class is required. Amounts are
    ``Decimal`` in the provider's ``unit``. Raise :class:`~spendguard.ProviderError` (or
    one of its subclasses) for anything that is not a usable answer:
    :class:`~spendguard.BalanceUnavailable` for transient trouble that a failure policy
    may tolerate, :class:`~spendguard.AuthenticationError` for a bad key.

    Example:
        >>> class Wallet:
        ...     name, unit, account_id = "wallet", "credits", "wallet:team-a"
        ...     def fetch_balance(self) -> Decimal:
        ...         return Decimal("12.5")
        ...     def check(self, amount: Decimal) -> Check:
        ...         return Check.of(amount, self.fetch_balance(), self.unit, "remote")
    """

    @property
    def name(self) -> str:
        """Short name used in messages and logs, e.g. ``"hyper3d"``."""
        ...

    @property
    def unit(self) -> str:
        """The unit of every amount, e.g. ``"USD"`` or ``"credits"``."""
        ...

    @property
    def account_id(self) -> str:
        """A stable identifier of the account, never containing the key itself.

        Guards whose providers report the same ``account_id`` share one balance snapshot
        and one set of holds in the process.
        """
        ...

    def fetch_balance(self) -> Decimal:
        """Look up the account's balance now."""
        ...

    def check(self, amount: Decimal) -> Check:
        """Ask whether the account covers ``amount``; ``available`` is the balance seen."""
        ...


_P = TypeVar("_P", bound="HTTPProvider")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def account_url(base_url: str) -> str:
    """``base_url`` as one account knows it, whatever its spelling: scheme and host in
    lower case, the port always given, ``localhost``, ``127.0.0.1`` and ``[::1]`` as one
    name, and the path without dot segments or a trailing slash."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOCAL_NAMES:
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    path = posixpath.normpath(parts.path) if parts.path else ""
    path = "" if path in (".", "/", "//") else path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


class HTTPProvider:
    """Shared machinery of the bundled providers: key, base URL, session and requests."""

    name: str = ""
    unit: str = ""
    _key_vars: tuple[str, ...] = ()
    _url_var: str = ""
    _default_url: str = ""

    def __init__(
        self,
        api_key: str | Secret | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigurationError(f"retries must be an int from 0 to 10, got {retries!r}")
        self._key = resolve_key(api_key, self._key_vars, self.name)
        del api_key
        scrub_http_logs()
        self.base_url = resolve_base_url(base_url, self._url_var, self._default_url, self.name)
        self.timeout = float(timeout)
        self._owns_session = session is None
        self.retries = retries
        self._session = build_session(retries, self.timeout) if session is None else session
        self._lock = threading.Lock()
        digest = hashlib.sha256(self._key.reveal().encode()).hexdigest()[:16]
        self._account_id = f"{self.name}:{account_url(self.base_url)}:{digest}"

    @property
    def account_id(self) -> str:
        """``kind:base_url:sha256(key)[:16]``: identifies the account without the key."""
        return self._account_id

    def close(self) -> None:
        """Close the HTTP session if this provider created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Also for a provider whose constructor raised half-way (a traceback with locals).
        key = getattr(self, "_key", None)
        return (
            f"{type(self).__name__}(api_key={'…' if key is None else redact(key.reveal())!r}, "
            f"base_url={getattr(self, 'base_url', None)!r}, "
            f"timeout={getattr(self, 'timeout', None)!r})"
        )

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        return request_json(
            self._session,
            method,
            self.base_url + path,
            key=self._key,
            provider=self.name,
            timeout=self.timeout,
            payload=payload,
        )
