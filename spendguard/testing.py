"""A loopback HTTP server that behaves like Orthogonal and Hyper3D Rodin, for tests.

`ProviderSimulator` answers the credit endpoints and the paid calls of both providers
(as their public documentation describes them), holds exact `~decimal.Decimal`
balances, charges for paid calls atomically, counts and records every request, and
injects faults on demand: error statuses, HTML bodies, slow answers and dropped
connections. It uses only the standard library, so it can run in any test suite::

    import os

    from spendguard.testing import ProviderSimulator

    with ProviderSimulator(orthogonal_usd="2.50") as sim:
        os.environ["SPENDGUARD_ORTHOGONAL_URL"] = sim.url
        sim.fail("POST /v1/run", status=502, body="<html>Bad gateway</html>")
        ...  # exercise the code under test
        assert sim.count("GET /v1/credits/balance") == 1
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import selectors
import socket
import socketserver
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    InvalidOperation,
)
from email import policy
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, TypeAlias

from ._account import ACCOUNTS
from ._redis_server import RedisServer

__all__ = ["Charge", "ProviderSimulator", "RecordedRequest", "RedisServer", "reset"]

_log = logging.getLogger("spendguard.testing")

Amount: TypeAlias = Decimal | str | int
OrthogonalPrice: TypeAlias = str | Decimal | float | int
Provider: TypeAlias = Literal["orthogonal", "hyper3d"]

_CONTEXT = Context(prec=100)
_CENT = Decimal("0.01")
_MAX_BODY = 32 * 1024 * 1024
_DRAIN_TIMEOUT = 2.0
_PLACEHOLDER_GLB = b"glTF\x02\x00\x00\x00\x0c\x00\x00\x00"

_DEFAULT_ORTHOGONAL_PRICES: dict[tuple[str, str], OrthogonalPrice] = {
    ("sim-search", "/search"): "$0.01",
    ("sim-enrich", "/enrich"): "0.10",
    ("sim-scrape", "/scrape"): 0.03,
    ("sim-micro", "/ping"): "$0.001",
    ("sim-dynamic", "/run"): "dynamic",
}
_DEFAULT_RODIN_PRICES: dict[str, Decimal] = {
    "Sketch": Decimal("0.5"),
    "Regular": Decimal("0.5"),
    "Detail": Decimal("0.5"),
    "Smooth": Decimal("0.5"),
    "Gen-2": Decimal("0.5"),
    "Gen-2.5-Extreme-Low": Decimal("0.5"),
    "Gen-2.5-Low": Decimal("0.5"),
    "Gen-2.5-Medium": Decimal("0.5"),
    "Gen-2.5-High": Decimal("0.5"),
    "Gen-2.5-Extreme-High": Decimal("1.0"),
}
_DEFAULT_RODIN_ADDON_PRICES: dict[str, Decimal] = {"HighPack": Decimal("1.0")}

_ORTHOGONAL_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_CREDITS",
    404: "NOT_FOUND",
    429: "RATE_LIMITED",
}
_HYPER3D_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    402: "INSUFFICIENT_FUND",
    404: "NOT_FOUND",
    429: "RATE_LIMITED",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request that reached the simulator.

    Attributes:
        method: The HTTP method, upper case.
        path: The path, without the query string.
        headers: The request headers as sent (a repeated header keeps its last value).
        body: The raw request body.
        time: `time.monotonic` when the request arrived.
        query: The raw query string, without the ``?``.
    """

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    time: float
    query: str = ""

    @property
    def route(self) -> str:
        """The route of the request, like ``"POST /v1/run"``."""
        return f"{self.method} {self.path}"

    def json(self) -> Any:
        """Decode the body as JSON, floats as `~decimal.Decimal`.

        Raises:
            ValueError: The body is not JSON.
        """
        return json.loads(self.body, parse_float=Decimal)


@dataclass(frozen=True)
class Charge:
    """One successful paid call.

    Attributes:
        provider: ``"orthogonal"`` (amounts in US dollars) or ``"hyper3d"`` (in credits).
        amount: What the call cost.
        balance_after: The balance right after the charge.
    """

    provider: Provider
    amount: Decimal
    balance_after: Decimal


@dataclass
class _Fault:
    route: str
    status: int | None
    body: bytes | None
    content_type: str
    headers: tuple[tuple[str, str], ...]
    delay: float
    drop: bool
    remaining: int


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class _Refusal(Exception):
    """An error answer, built into the provider's own error shape by the dispatcher."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class _BodyError(Exception):
    """The request body could not be read."""


class ProviderSimulator:
    """A real HTTP server on loopback that answers like Orthogonal and Hyper3D Rodin.

    Orthogonal lives under ``/v1/``, Hyper3D under ``/api/v2/``, both on `url`. Every
    endpoint wants ``Authorization: Bearer <api_key>``. All state is guarded by one lock,
    so tests may change balances, prices and faults while requests are in flight.

    Args:
        host: Address to listen on; an IPv6 address such as ``"::1"`` works too.
        port: Port to listen on; 0 picks a free port.
        api_key: The only Bearer key accepted.
        orthogonal_usd: Starting Orthogonal balance in US dollars.
        hyper3d_credits: Starting Hyper3D balance in credits.
        units_per_dollar: Scale of Orthogonal's ``*Cents`` fields (100,000 or 100).

    Attributes:
        api_key: The only Bearer key accepted.
        orthogonal_prices: ``(api slug, path)`` to price, emitted verbatim by
            ``/v1/details``: ``"$0.03"``, ``"0.03"``, a number, or ``"dynamic"`` (charged
            `orthogonal_dynamic_price`).
        rodin_prices: Rodin tier to credits.
        rodin_addon_prices: Rodin addon to credits.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sim-test-key",
        orthogonal_usd: Amount = "5.00",
        hyper3d_credits: Amount = "10",
        units_per_dollar: int = 100_000,
    ) -> None:
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._host = host
        self._port = port
        self.api_key = api_key
        self._units_per_dollar = _positive_int(units_per_dollar, "units_per_dollar")
        self._orthogonal_balance = _to_decimal(orthogonal_usd, "orthogonal_usd")
        self._hyper3d_balance = _to_decimal(hyper3d_credits, "hyper3d_credits")
        self._orthogonal_dynamic_price = Decimal("0.05")
        self._orthogonal_daily_spend = Decimal(0)
        self._key_daily_limit_usd: Decimal | None = None
        self._account_daily_limit_usd: Decimal | None = None
        self.orthogonal_prices: dict[tuple[str, str], OrthogonalPrice] = dict(
            _DEFAULT_ORTHOGONAL_PRICES
        )
        self.rodin_prices: dict[str, Decimal] = dict(_DEFAULT_RODIN_PRICES)
        self.rodin_addon_prices: dict[str, Decimal] = dict(_DEFAULT_RODIN_ADDON_PRICES)
        self._counts: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._charges: list[Charge] = []
        self._faults: list[_Fault] = []
        self._jobs: dict[str, list[str]] = {}
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Callable[[_Request], _Response]] = {
            ("GET", "/v1/credits/balance"): self._orthogonal_balance_route,
            ("POST", "/v1/credits/check"): self._orthogonal_check_route,
            ("POST", "/v1/details"): self._orthogonal_details_route,
            ("POST", "/v1/run"): self._orthogonal_run_route,
            ("GET", "/api/v2/check_balance"): self._hyper3d_balance_route,
            ("POST", "/api/v2/rodin"): self._hyper3d_rodin_route,
            ("POST", "/api/v2/status"): self._hyper3d_status_route,
            ("POST", "/api/v2/download"): self._hyper3d_download_route,
        }

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<ProviderSimulator {self.host}:{self.port} {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, like ``"http://127.0.0.1:8123"`` (IPv6 hosts in brackets).

        Raises:
            RuntimeError: No port is known yet (port 0 and never started).
        """
        if self._port == 0:
            raise RuntimeError("ProviderSimulator has no URL until start() binds a port")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting requests."""
        return self._server is not None

    def start(self) -> ProviderSimulator:
        """Bind the port and serve requests from a daemon thread.

        Returns:
            The simulator itself, so ``sim = ProviderSimulator().start()`` works.

        Raises:
            RuntimeError: It is already running.
            OSError: The address cannot be bound.
        """
        with self._lock:
            if self._server is not None:
                raise RuntimeError("ProviderSimulator is already running")
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            server = _Server((self._host, self._port), self, family)
            thread = threading.Thread(
                target=server.run,
                name=f"spendguard-simulator-{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._server = server
            self._thread = thread
            self._port = server.server_port
        return self

    def stop(self) -> None:
        """Stop serving, free the port and cut open connections; safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.wake()
        if thread is not None:
            thread.join(timeout=_DRAIN_TIMEOUT)
        server.server_close()
        with self._drained:
            _cut(list(self._connections))
            self._drained.wait_for(lambda: not self._connections, timeout=_DRAIN_TIMEOUT)

    def __enter__(self) -> ProviderSimulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- balances, prices and limits ---------------------------------------------------

    @property
    def orthogonal_balance(self) -> Decimal:
        """The Orthogonal balance in US dollars; set it with a `Decimal`, str or int."""
        with self._lock:
            return self._orthogonal_balance

    @orthogonal_balance.setter
    def orthogonal_balance(self, value: Amount) -> None:
        amount = _to_decimal(value, "orthogonal_balance")
        with self._lock:
            self._orthogonal_balance = amount

    @property
    def hyper3d_balance(self) -> Decimal:
        """The Hyper3D balance in credits; set it with a `Decimal`, str or int."""
        with self._lock:
            return self._hyper3d_balance

    @hyper3d_balance.setter
    def hyper3d_balance(self, value: Amount) -> None:
        amount = _to_decimal(value, "hyper3d_balance")
        with self._lock:
            self._hyper3d_balance = amount

    @property
    def units_per_dollar(self) -> int:
        """How many units of Orthogonal's ``*Cents`` fields make a dollar (100,000 or 100)."""
        with self._lock:
            return self._units_per_dollar

    @units_per_dollar.setter
    def units_per_dollar(self, value: int) -> None:
        units = _positive_int(value, "units_per_dollar")
        with self._lock:
            self._units_per_dollar = units

    @property
    def orthogonal_dynamic_price(self) -> Decimal:
        """What a call priced ``"dynamic"`` costs, in US dollars (default 0.05)."""
        with self._lock:
            return self._orthogonal_dynamic_price

    @orthogonal_dynamic_price.setter
    def orthogonal_dynamic_price(self, value: Amount) -> None:
        price = _to_price(value, "orthogonal_dynamic_price")
        with self._lock:
            self._orthogonal_dynamic_price = price

    @property
    def key_daily_limit_usd(self) -> Decimal | None:
        """The API key's daily spend limit in US dollars, or None for no limit."""
        with self._lock:
            return self._key_daily_limit_usd

    @key_daily_limit_usd.setter
    def key_daily_limit_usd(self, value: Amount | None) -> None:
        limit = None if value is None else _to_decimal(value, "key_daily_limit_usd")
        with self._lock:
            self._key_daily_limit_usd = limit

    @property
    def account_daily_limit_usd(self) -> Decimal | None:
        """The account's daily spend limit in US dollars, or None for no limit."""
        with self._lock:
            return self._account_daily_limit_usd

    @account_daily_limit_usd.setter
    def account_daily_limit_usd(self, value: Amount | None) -> None:
        limit = None if value is None else _to_decimal(value, "account_daily_limit_usd")
        with self._lock:
            self._account_daily_limit_usd = limit

    @property
    def orthogonal_daily_spend(self) -> Decimal:
        """Dollars charged "today", checked against the daily limits; set 0 for a new day."""
        with self._lock:
            return self._orthogonal_daily_spend

    @orthogonal_daily_spend.setter
    def orthogonal_daily_spend(self, value: Amount) -> None:
        spend = _to_decimal(value, "orthogonal_daily_spend")
        with self._lock:
            self._orthogonal_daily_spend = spend

    # -- observation -------------------------------------------------------------------

    def count(self, route: str | None = None) -> int:
        """Count the requests that reached the server, failed ones included.

        Args:
            route: ``"GET /v1/credits/balance"`` for one route, ``"/v1/run"`` for one path
                under any method, None or ``"*"`` for every request.

        Returns:
            The number of matching requests since start or the last `reset_counts`.
        """
        pattern = _normalize_route(route or "*")
        with self._lock:
            return sum(n for key, n in self._counts.items() if _route_matches(pattern, key))

    def reset_counts(self) -> None:
        """Forget the request counts and the recorded requests."""
        with self._lock:
            self._counts.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def charges(self) -> list[Charge]:
        """A copy of the successful paid calls, oldest first."""
        with self._lock:
            return list(self._charges)

    # -- faults ------------------------------------------------------------------------

    def fail(
        self,
        route: str,
        *,
        status: int = 500,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int = 1,
    ) -> None:
        """Make the next matching requests fail instead of being served.

        Faults are queued and each request consumes the oldest one whose route matches.

        Args:
            route: ``"POST /v1/run"``, a bare path for any method, or ``"*"`` for any request.
            status: The status to answer with.
            body: A dict or list is sent as JSON, a str or bytes as is; None sends the
                provider's own error envelope for ``status``.
            headers: Extra response headers, such as ``{"Retry-After": "1"}``.
            delay: Seconds to wait before failing.
            drop: Close the connection without any answer instead.
            times: How many requests this fault applies to.

        Raises:
            ValueError: An argument is out of range.
        """
        if not 100 <= status <= 599:
            raise ValueError(f"status must be between 100 and 599, got {status}")
        payload, content_type = _fault_body(body)
        self._add_fault(
            route,
            status=status,
            body=payload,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            delay=delay,
            drop=drop,
            times=times,
        )

    def slow(self, route: str, delay: float, *, times: int = 1) -> None:
        """Answer the next matching requests normally, but only after ``delay`` seconds.

        Args:
            route: Like in `fail`.
            delay: Seconds to wait before answering.
            times: How many requests to slow down.

        Raises:
            ValueError: An argument is out of range.
        """
        self._add_fault(
            route,
            status=None,
            body=None,
            content_type="",
            headers=(),
            delay=delay,
            drop=False,
            times=times,
        )

    def clear_faults(self) -> None:
        """Drop every fault still queued."""
        with self._lock:
            self._faults.clear()

    def _add_fault(
        self,
        route: str,
        *,
        status: int | None,
        body: bytes | None,
        content_type: str,
        headers: tuple[tuple[str, str], ...],
        delay: float,
        drop: bool,
        times: int,
    ) -> None:
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        if not delay >= 0:
            raise ValueError(f"delay must be zero or more seconds, got {delay!r}")
        fault = _Fault(
            route=_normalize_route(route),
            status=status,
            body=body,
            content_type=content_type,
            headers=headers,
            delay=float(delay),
            drop=drop,
            remaining=times,
        )
        with self._lock:
            self._faults.append(fault)

    # -- request handling (called from the handler threads) ----------------------------

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._drained:
            self._connections.discard(connection)
            self._drained.notify_all()

    def _arrive(self, request: _Request, query: str, arrived: float) -> _Fault | None:
        """Record and count a request, and take the fault it meets, if any."""
        route = f"{request.method} {request.path}"
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=request.body,
            time=arrived,
            query=query,
        )
        with self._lock:
            self._counts[route] = self._counts.get(route, 0) + 1
            self._requests.append(record)
            for index, fault in enumerate(self._faults):
                if _route_matches(fault.route, route):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        del self._faults[index]
                    return fault
        return None

    def _fault_response(self, fault: _Fault, request: _Request) -> _Response:
        status = fault.status if fault.status is not None else 500
        if fault.body is None:
            provider = _provider_for(request.path)
            response = _error(provider, status, f"Simulated fault: HTTP {status}")
            return _Response(response.status, response.body, response.content_type, fault.headers)
        return _Response(status, fault.body, fault.content_type, fault.headers)

    def _respond(self, request: _Request) -> _Response:
        provider = _provider_for(request.path)
        try:
            if request.method == "GET" and request.path.startswith("/files/"):
                return _Response(200, _PLACEHOLDER_GLB, "application/octet-stream")
            if not self._authorized(request):
                raise _Refusal(401, "Invalid or missing API key")
            route = self._routes.get((request.method, request.path))
            if route is None:
                raise _Refusal(404, f"Not found: {request.method} {request.path}")
            return route(request)
        except _Refusal as refusal:
            return _error(provider, refusal.status, refusal.message, refusal.code)
        except Exception as exc:  # the simulator answers every request, whatever happens
            return _error(provider, 500, f"Simulator error: {type(exc).__name__}: {exc}")

    def _authorized(self, request: _Request) -> bool:
        sent = request.header("Authorization") or ""
        expected = f"Bearer {self.api_key}"
        return hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8"))

    # -- Orthogonal --------------------------------------------------------------------

    def _orthogonal_balance_route(self, request: _Request) -> _Response:
        return _json_response(200, {"balance": _format_usd(self.orthogonal_balance)})

    def _orthogonal_check_route(self, request: _Request) -> _Response:
        required = _json_object(request.body).get("amountCents")
        if isinstance(required, bool) or not isinstance(required, int) or required < 0:
            raise _Refusal(400, "amountCents must be a non-negative integer")
        with self._lock:
            balance, units = self._orthogonal_balance, self._units_per_dollar
        balance_units = int(
            _CONTEXT.multiply(balance, units).to_integral_value(rounding=ROUND_FLOOR)
        )
        return _json_response(
            200,
            {
                "sufficient": balance_units >= required,
                "balanceCents": balance_units,
                "requiredCents": required,
                "shortfallCents": max(0, required - balance_units),
            },
        )

    def _orthogonal_details_route(self, request: _Request) -> _Response:
        api, path = _endpoint(_json_object(request.body))
        with self._lock:
            price = self.orthogonal_prices.get((api, path))
        if price is None:
            raise _Refusal(404, f"Endpoint not found: {api} {path}")
        endpoint = {"api": api, "path": path, "price": price, "isPayable": True}
        return _json_response(200, {"success": True, "endpoint": endpoint})

    def _orthogonal_run_route(self, request: _Request) -> _Response:
        payload = _json_object(request.body)
        api, path = _endpoint(payload)
        if not isinstance(payload.get("query", {}), dict | None):
            raise _Refusal(400, "query must be an object")
        with self._lock:
            listed = self.orthogonal_prices.get((api, path))
            if listed is None:
                raise _Refusal(404, f"Endpoint not found: {api} {path}")
            price = self._orthogonal_price_of(listed)
            self._charge_orthogonal(price)
            units = self._units_per_dollar
        price_units = int(_CONTEXT.multiply(price, units).to_integral_value(ROUND_CEILING))
        return _json_response(
            200,
            {
                "success": True,
                "price": _plain_amount(price),
                "priceCents": price_units,
                "data": {"echo": payload.get("body")},
                "requestId": str(uuid.uuid4()),
            },
        )

    def _orthogonal_price_of(self, listed: OrthogonalPrice) -> Decimal:
        if isinstance(listed, str) and listed.strip().lower() == "dynamic":
            return self._orthogonal_dynamic_price
        return _to_price(listed, "orthogonal price")

    def _charge_orthogonal(self, price: Decimal) -> None:
        """Deduct ``price`` or refuse with 402; the caller holds the lock."""
        balance = self._orthogonal_balance
        if balance < price:
            raise _Refusal(
                402,
                f"Insufficient credits: balance {_format_usd(balance, exact=True)}, "
                f"required {_format_usd(price, exact=True)}",
            )
        spend = _CONTEXT.add(self._orthogonal_daily_spend, price)
        if self._key_daily_limit_usd is not None and spend > self._key_daily_limit_usd:
            raise _Refusal(402, "Daily spend limit reached for this API key")
        if self._account_daily_limit_usd is not None and spend > self._account_daily_limit_usd:
            raise _Refusal(402, "Daily spend limit reached for this account")
        self._orthogonal_balance = _CONTEXT.subtract(balance, price)
        self._orthogonal_daily_spend = spend
        self._charges.append(Charge("orthogonal", price, self._orthogonal_balance))

    # -- Hyper3D -----------------------------------------------------------------------

    def _hyper3d_balance_route(self, request: _Request) -> _Response:
        return _json_response(201, {"balance": self.hyper3d_balance})

    def _hyper3d_rodin_route(self, request: _Request) -> _Response:
        fields = _form_fields(request)
        tier = next((v for v in reversed(fields.get("tier", [])) if v.strip()), "Regular")
        addons = _addon_names(fields.get("addons", []))
        job, subscription_key = str(uuid.uuid4()), secrets.token_urlsafe(24)
        with self._lock:
            price = self._rodin_price(tier.strip(), addons)
            balance = self._hyper3d_balance
            if balance < price:
                raise _Refusal(402, "Insufficient credits")
            self._hyper3d_balance = _CONTEXT.subtract(balance, price)
            self._charges.append(Charge("hyper3d", price, self._hyper3d_balance))
            self._jobs[subscription_key] = [job]
        return _json_response(
            201,
            {
                "error": None,
                "message": "Submitted.",
                "uuid": job,
                "jobs": {"uuids": [job], "subscription_key": subscription_key},
            },
        )

    def _rodin_price(self, tier: str, addons: list[str]) -> Decimal:
        """Price a generation in credits; the caller holds the lock."""
        tier_price = self.rodin_prices.get(tier)
        if tier_price is None:
            raise _Refusal(400, f"Unknown tier: {tier!r}", "INVALID_TIER")
        price = _to_price(tier_price, "rodin price")
        for addon in addons:
            addon_price = self.rodin_addon_prices.get(addon)
            if addon_price is None:
                raise _Refusal(400, f"Unknown addon: {addon!r}", "INVALID_ADDON")
            price = _CONTEXT.add(price, _to_price(addon_price, "rodin addon price"))
        return price

    def _hyper3d_status_route(self, request: _Request) -> _Response:
        key = _first(_form_fields(request), "subscription_key")
        with self._lock:
            jobs = list(self._jobs.get(key or "", []))
        if not jobs:
            jobs = [str(uuid.uuid4())]
        statuses = [{"uuid": job, "status": "Done"} for job in jobs]
        return _json_response(201, {"error": "OK", "jobs": statuses})

    def _hyper3d_download_route(self, request: _Request) -> _Response:
        task = _first(_form_fields(request), "task_uuid") or str(uuid.uuid4())
        file_url = f"{self.url}/files/{urllib.parse.quote(task, safe='')}/base.glb"
        return _json_response(201, {"error": "OK", "list": [{"url": file_url, "name": "base.glb"}]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """The access log goes to logger ``spendguard.testing`` at DEBUG, not to stderr."""
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("simulator: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        arrived = time.monotonic()
        simulator = self.server.simulator
        path, _, query = self.path.partition("?")
        headers = dict(self.headers.items())
        try:
            body = self._read_body()
        except _BodyError as exc:
            request = _Request(self.command, path, headers, b"")
            simulator._arrive(request, query, arrived)
            self.close_connection = True
            self._send(_error(_provider_for(path), 400, str(exc)))
            return
        request = _Request(self.command, path, headers, body)
        fault = simulator._arrive(request, query, arrived)
        if fault is not None:
            if self.server.stopping.wait(fault.delay) or fault.drop:
                self._drop()
                return
            if fault.status is not None:
                self._send(simulator._fault_response(fault, request))
                return
        self._send(simulator._respond(request))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        text = self.headers.get("Content-Length")
        if text is None:
            return b""
        try:
            length = int(text)
        except ValueError:
            raise _BodyError(f"Invalid Content-Length: {text!r}") from None
        if not 0 <= length <= _MAX_BODY:
            raise _BodyError(f"Content-Length out of range: {length}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BodyError("Request body ended early")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError("Invalid chunk size") from None
            total += size
            if size < 0 or total > _MAX_BODY:
                raise _BodyError("Chunked body too large")
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BodyError("Request body ended early")
            chunks.append(chunk)
            self.rfile.readline(1024)

    def _send(self, response: _Response) -> None:
        body = response.body
        if response.status < 200 or response.status in (204, 304):
            body = b""
        extra = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        try:
            self.send_response(response.status)
            if not any(k.lower() == "content-type" for k, _ in extra) and body:
                self.send_header("Content-Type", response.content_type)
            for key, value in extra:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    timeout = 0.0  # handle_request() must only take a connection that run() saw waiting

    def __init__(
        self, address: tuple[str, int], simulator: ProviderSimulator, family: socket.AddressFamily
    ) -> None:
        self.address_family = family
        self.simulator = simulator
        self.stopping = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._close_wake_sockets()
            raise

    def run(self) -> None:
        """Accept connections until `wake` is called.

        Unlike serve_forever(), which notices a shutdown only at its next poll, this loop
        wakes at once, so stopping a simulator costs no poll interval.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self.stopping.is_set():
                ready = selector.select()
                if not self.stopping.is_set() and any(
                    key.fileobj is self.socket for key, _ in ready
                ):
                    self.handle_request()

    def wake(self) -> None:
        """Set `stopping` and make `run` return."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._close_wake_sockets()

    def _close_wake_sockets(self) -> None:
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, socket.socket):
            self.simulator._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        super().shutdown_request(request)
        if isinstance(request, socket.socket):
            self.simulator._untrack(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by clients or by stop() are expected; stay quiet."""


# -- helpers ---------------------------------------------------------------------------


def _cut(connections: list[socket.socket]) -> None:
    """Shut every connection down (a loop of its own: as the last loop inside a ``with``,
    CPython 3.12 leaves its backward jump out of the exception table)."""
    for connection in connections:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)


def _to_decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int | float):
        raise TypeError(f"{name} must be a Decimal, str or int, got {type(value).__name__}")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return amount


def _to_price(value: object, name: str) -> Decimal:
    """Read a price written as ``"$1,234.5"``, ``"0.03"``, a number or a `Decimal`."""
    if isinstance(value, str):
        value = value.strip().removeprefix("$").replace(",", "")
    price = _to_decimal(value, name)
    if price < 0:
        raise ValueError(f"{name} must not be negative, got {price}")
    return price


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _format_usd(amount: Decimal, *, exact: bool = False) -> str:
    """``"$1,234.56"`` / ``"-$0.50"``; exact keeps digits past the cent instead of rounding."""
    if not exact:
        amount = amount.quantize(_CENT, rounding=ROUND_HALF_EVEN, context=_CONTEXT)
    sign = "-" if amount < 0 else ""
    whole, _, cents = _plain_amount(abs(amount)).partition(".")
    return f"{sign}${int(whole):,}.{cents}"


def _plain_amount(amount: Decimal) -> str:
    """Fixed-point text with at least two decimals: ``"0.10"``, ``"0.001"``."""
    whole, _, fraction = format(amount, "f").partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _number_text(number: Decimal) -> str:
    """JSON number text for a `Decimal`, exact: ``10``, ``12.5``."""
    if not number.is_finite():
        raise ValueError(f"{number} has no JSON form")
    if not -60 < number.adjusted() < 60:
        return str(number)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number, "f").rstrip("0")


def _to_json(value: object) -> str:
    """Serialize like `json.dumps`, writing `Decimal` numbers exactly."""
    if isinstance(value, Decimal):
        return _number_text(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{_to_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_to_json(item) for item in value) + "]"
    return json.dumps(value, allow_nan=False)


def _json_response(status: int, payload: dict[str, Any]) -> _Response:
    return _Response(status, _to_json(payload).encode("utf-8"))


def _provider_for(path: str) -> Provider:
    return "hyper3d" if path.startswith("/api/") else "orthogonal"


def _error(provider: Provider, status: int, message: str, code: str | None = None) -> _Response:
    if provider == "hyper3d":
        code = code or _HYPER3D_CODES.get(status, "INTERNAL_SERVER_ERROR")
        return _json_response(status, {"error": code, "message": message})
    code = code or _ORTHOGONAL_CODES.get(status, "UPSTREAM_ERROR")
    return _json_response(status, {"success": False, "error": message, "code": code})


def _fault_body(body: bytes | str | dict[str, Any] | list[Any] | None) -> tuple[bytes | None, str]:
    if body is None:
        return None, "application/json"
    if isinstance(body, dict | list):
        return _to_json(body).encode("utf-8"), "application/json"
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    looks_html = raw.lstrip()[:1] == b"<"
    return raw, "text/html; charset=utf-8" if looks_html else "text/plain; charset=utf-8"


def _normalize_route(route: str) -> str:
    """``"*"``, ``"/path"`` (any method) or ``"METHOD /path"``."""
    text = route.strip()
    if text == "*" or text.startswith("/"):
        return text
    method, _, path = text.partition(" ")
    path = path.strip()
    if not method or not path.startswith("/"):
        raise ValueError(f'route must look like "POST /v1/run", "/v1/run" or "*", got {route!r}')
    return f"{method.upper()} {path}"


def _route_matches(pattern: str, route: str) -> bool:
    if pattern in ("*", route):
        return True
    return pattern.startswith("/") and route.partition(" ")[2] == pattern


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Refusal(400, "Request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _Refusal(400, "Request body must be a JSON object")
    return payload


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _endpoint(payload: dict[str, Any]) -> tuple[str, str]:
    api, path = payload.get("api"), payload.get("path")
    if not isinstance(api, str) or not isinstance(path, str) or not api or not path:
        raise _Refusal(400, "api and path must be non-empty strings")
    return api, path


def _form_fields(request: _Request) -> dict[str, list[str]]:
    """The text fields of a multipart, urlencoded or JSON body; file parts are skipped."""
    if not request.body.strip():
        return {}
    content_type = request.header("Content-Type") or ""
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart_fields(content_type, request.body)
    if kind == "application/x-www-form-urlencoded":
        fields: dict[str, list[str]] = {}
        text = request.body.decode("utf-8", "replace")
        for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            fields.setdefault(key, []).append(value)
        return fields
    if kind in ("application/json", ""):
        payload = _json_object(request.body)
        return {
            key: [str(v) for v in value] if isinstance(value, list) else [str(value)]
            for key, value in payload.items()
            if value is not None
        }
    raise _Refusal(400, f"Unsupported Content-Type: {content_type!r}")


def _multipart_fields(content_type: str, body: bytes) -> dict[str, list[str]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head.encode("latin-1", "replace") + body)
    if not message.is_multipart():
        raise _Refusal(400, "Malformed multipart body")
    fields: dict[str, list[str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None or part.get_filename() is not None:
            continue
        text_name = collapse_rfc2231_value(name) if isinstance(name, tuple) else str(name)
        payload = part.get_payload(decode=True)
        value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        fields.setdefault(text_name, []).append(value)
    return fields


def _addon_names(values: list[str]) -> list[str]:
    """Addons sent as repeated fields, one comma-separated field, or a JSON array string."""
    names: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise _Refusal(400, f"Malformed addons: {value!r}") from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise _Refusal(400, f"Malformed addons: {value!r}")
        else:
            items = text.split(",")
        names.extend(item.strip() for item in items if item.strip())
    return list(dict.fromkeys(names))


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def reset() -> None:
    """Forget every account's cached balance and holds in this process, as at start-up.

    Call it between tests so that a guard built in one test never decides from a balance
    looked up in another: guards built afterwards start from an empty account, and guards
    built before look the balance up before their next decision (their own open holds
    stay with them). A shared ledger such as `spendguard.redis.RedisLedger` keeps its state.
    The pytest plugin calls it before every test.
    """
    ACCOUNTS.reset()
