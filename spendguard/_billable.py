"""The one core of the guarded HTTP faces: a request in, a priced decision and an outcome out.

The ``requests`` adapter (``_session``) and the httpx transports (``spendguard.httpx``) are
shells over this module: each reads its own request object through a :class:`Outgoing`,
asks a :class:`PriceList` what sending it would hold, holds that with ``guard.spend`` and
hands what happened to :func:`end_on_answer` or :func:`end_on_failure`. The route table,
the built-in prices and the outcome rules are written here only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from email.message import Message
from email.utils import collapse_rfc2231_value
from fnmatch import fnmatchcase
from typing import Any, Protocol, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

from ._answer import Secret, decode, describe_error
from ._errors import ConfigurationError, InsufficientCredits, SpendGuardError
from ._guard import SpendGuard
from ._hold import Hold
from ._hyper3d import Hyper3D
from ._money import Amount, format_amount, to_amount
from ._orthogonal import Orthogonal
from .pricing import RODIN_PRICES, RodinPrices, UnknownPrice, parse_orthogonal_price

log = logging.getLogger("spendguard")

RequestCost: TypeAlias = Callable[[Any], Amount | None]
"""A callable pricing one request (the HTTP library's own request object): an amount, or
``None`` for free."""

RoutePrices: TypeAlias = Mapping[str, Amount | RequestCost | None]
"""``"METHOD pattern"`` to a fixed amount, a :data:`RequestCost`, or ``None`` (free)."""

ERROR_BODY_LIMIT = 64 * 1024
"""At most this much of a 402's body is read for its message."""

RODIN_ROUTE = "/api/v2/rodin"
RUN_ROUTE = "/v1/run"
_GLOB_CHARS = frozenset("*?[")
_SEEN_LIMIT = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}

Quote: TypeAlias = tuple[Decimal, bool]
"""What sending a request holds, and whether its answer's ``price`` says what was charged."""


class Outgoing(Protocol):
    """What the core reads of a request, whatever HTTP library built it."""

    @property
    def method(self) -> str:
        """The method, upper-cased."""

    @property
    def url(self) -> str:
        """The whole URL."""

    @property
    def native(self) -> Any:
        """The library's own request, handed to the caller's price callables."""

    def header(self, name: str) -> str:
        """A header's value, ``""`` when absent."""

    def body(self, route: str) -> bytes:
        """The whole body. Raises :class:`UnknownPrice` naming ``route`` when the body is
        streamed and cannot be read before sending."""


class Route:
    """Where a request falls in a :class:`PriceList`: free, a price of the caller's, or a
    built-in."""

    __slots__ = ("builtin", "found", "price")

    def __init__(self, found: bool, price: Any, builtin: str | None) -> None:
        self.found = found
        self.price = price
        self.builtin = builtin

    @property
    def free(self) -> bool:
        """Nothing to price: the request passes straight through."""
        return (self.found and self.price is None) or (not self.found and self.builtin is None)

    @property
    def looks_up(self) -> bool:
        """Pricing it may send an HTTP request (Orthogonal's ``/v1/details``)."""
        return not self.found and self.builtin == RUN_ROUTE


_FREE = Route(False, None, None)


class PriceList:
    """A guard's route table: the caller's ``prices`` first, then the provider's built-in.

    Raises:
        ConfigurationError: A price key or amount is malformed.
        TypeError: ``guard`` is not a :class:`~spendguard.SpendGuard`.
    """

    __slots__ = (
        "_builtin",
        "_exact",
        "_globs",
        "_seen",
        "guard",
        "keys",
        "max_cost",
        "rodin_prices",
    )

    def __init__(
        self,
        guard: SpendGuard,
        prices: RoutePrices | None,
        max_cost: Amount | None,
        rodin_prices: RodinPrices | None,
    ) -> None:
        if not isinstance(guard, SpendGuard):
            raise TypeError(f"guard must be a spendguard.SpendGuard, got {type(guard).__name__}")
        if rodin_prices is not None and not isinstance(rodin_prices, RodinPrices):
            raise ConfigurationError(
                f"rodin_prices must be a spendguard.pricing.RodinPrices, "
                f"got {type(rodin_prices).__name__}"
            )
        self.guard = guard
        self.max_cost = None if max_cost is None else _amount(max_cost, "max_cost")
        self.rodin_prices = rodin_prices or RODIN_PRICES
        self.keys = tuple(prices or ())
        self._exact, self._globs = _routes(prices or {})
        self._builtin = _builtin_route(guard)
        # Routes already matched: a client sends to few URLs, and matching one costs a
        # tenth of a loopback request's time in the guard's benchmark.
        self._seen: dict[tuple[str, str], Route] = {}

    def route(self, method: str, url: str) -> Route:
        """Where ``method url`` falls: a price of the caller's, a built-in, or free."""
        seen = self._seen.get((method, url))
        if seen is not None:
            return seen
        route = self._match(method, url)
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()
        self._seen[method, url] = route
        return route

    def _match(self, method: str, url: str) -> Route:
        parts = urlsplit(url)
        path = normal_path(parts.path)
        target = normal_url(parts.scheme, parts.netloc, path)
        for verb in (method, "*"):
            for key in (path, target):
                if (verb, key) in self._exact:
                    return Route(True, self._exact[verb, key], None)
        for verb, pattern, price in self._globs:
            if verb in (method, "*") and fnmatchcase(target if "://" in pattern else path, pattern):
                return Route(True, price, None)
        builtin = self._builtin
        if builtin is None or method != "POST" or path.lower() != builtin[1]:
            return _FREE
        return Route(False, None, builtin[0])

    def quote(self, request: Outgoing, route: Route | None = None) -> Quote | None:
        """What sending ``request`` holds, or ``None`` when it is free.

        Raises:
            UnknownPrice: A billable request that cannot be priced.
            ProviderError: Orthogonal's price could not be looked up.
        """
        if route is None:
            route = self.route(request.method, request.url)
        if route.found:
            price = route.price
            if not callable(price):
                return None if price is None else (price, False)
            price = price(request.native)
            if price is None:
                return None
            name = f"the price of {request.method} {normal_path(urlsplit(request.url).path)}"
            return _amount(price, name), False
        if route.builtin == RODIN_ROUTE:
            return self._rodin_cost(request), False
        if route.builtin == RUN_ROUTE:
            return self._run_cost(request), True
        return None

    def describe(self, kind: str) -> str:
        """``<kind hyper3d routes=[...] max_cost=...>``."""
        max_cost = "None" if self.max_cost is None else repr(str(self.max_cost))
        return f"<{kind} {self.guard.provider.name} routes={list(self.keys)!r} max_cost={max_cost}>"

    def _rodin_cost(self, request: Outgoing) -> Decimal:
        fields = _form_fields(request, "POST /api/v2/rodin")
        tiers = list(dict.fromkeys(t.strip() for t in fields.get("tier", []) if t.strip()))
        addons = _addon_names(fields.get("addons", []))
        # Several tiers in one form: which one the server reads is not documented, so
        # hold the dearest.
        return max(self.rodin_prices.cost(tier, addons) for tier in tiers or ["Regular"])

    def _run_cost(self, request: Outgoing) -> Decimal:
        provider = self.guard.provider
        assert isinstance(provider, Orthogonal)
        payload = _json_body(request, "POST /v1/run")
        api, path = payload.get("api"), payload.get("path")
        if not isinstance(api, str) or not isinstance(path, str) or not api or not path:
            raise UnknownPrice(
                kind="request",
                name="POST /v1/run",
                reason="its JSON body needs 'api' and 'path' strings",
            )
        price = provider.price(api, path)
        if price is not None:
            return price
        if self.max_cost is None:
            raise UnknownPrice(
                kind="request",
                name="POST /v1/run",
                reason=(
                    f"orthogonal: {api} {path} has a dynamic price, known only after the "
                    "call, so the guard cannot tell whether the account can pay for it; "
                    "pass max_cost= to hold an upper bound for such calls"
                ),
            )
        return self.max_cost


# -- outcomes ------------------------------------------------------------------------------


def end_on_answer(hold: Hold, status: int, charged: Decimal | None) -> bool:
    """End ``hold`` for an answer with ``status``; ``True`` when it is a 402 (released: the
    caller raises :func:`payment_refusal`). A 2xx settles at ``charged`` (``None``: the
    cost held, with no conversion on the hot path); any other status releases."""
    if 200 <= status < 300:
        hold.settle(charged)
        return False
    hold.release()
    return status == 402


def charged_by(content: bytes) -> Decimal | None:
    """What an Orthogonal ``/v1/run`` answer says was charged, else ``None``.

    An answer that arrived but says nothing usable (no price, ``1e999999999``, HTML)
    settles at the cost held (``None``): the request was sent and paid for.
    """
    try:
        body = decode(content)
        price = parse_orthogonal_price(body.get("price")) if isinstance(body, dict) else None
    except SpendGuardError:
        price = None
    return price


def end_on_failure(
    guard: SpendGuard, hold: Hold, request: Outgoing, exc: BaseException, *, never_sent: bool
) -> None:
    """End ``hold`` for a request that raised: released when it surely never left, else
    counted as spent until the next balance lookup (it may have been charged)."""
    if never_sent:
        hold.release()
        return
    hold.settle()
    log.warning(
        "%s: %s %s failed after it may have been sent (%s); its %s stays counted as "
        "spent until the next balance lookup",
        guard.provider.name,
        request.method,
        urlsplit(request.url).path,
        type(exc).__name__,
        format_amount(hold.amount, guard.unit),
    )


def payment_message(raw: bytes, key: Secret | None) -> str:
    """The provider's words on a 402 (at most :data:`ERROR_BODY_LIMIT` of its body),
    scrubbed of the key, then cut."""
    if key is not None:
        raw = key.scrub_bytes(raw)
    body = decode(raw)
    message, _ = describe_error(body if key is None else key.scrub_json(body), raw, key)
    return message


def payment_refusal(guard: SpendGuard, cost: Decimal, message: str) -> InsufficientCredits:
    """A 402 as InsufficientCredits, with what the account really has now (one fresh
    lookup: it blocks), or ``available=None`` when that cannot be had."""
    guard.invalidate()
    available: Decimal | None
    try:
        available = guard.available()
    except SpendGuardError:
        available = None
    refusal = InsufficientCredits(
        required=cost,
        available=available,
        unit=guard.unit,
        provider=guard.provider.name,
        reason=f"{_cause_of_402(message)}; the provider answered HTTP 402: {message}",
    )
    log.warning("%s; the cached balance is dropped", refusal)
    return refusal


def bearer_key(authorization: str) -> Secret | None:
    """The key of an ``Authorization: Bearer <key>`` header, as a :class:`Secret`."""
    scheme, _, key = authorization.partition(" ")
    return Secret(key.strip()) if scheme.lower() == "bearer" and key.strip() else None


# -- routes ----------------------------------------------------------------------------------


def _amount(value: object, name: str) -> Decimal:
    try:
        return to_amount(value, name=name)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None


def _routes(
    prices: RoutePrices,
) -> tuple[dict[tuple[str, str], Any], list[tuple[str, str, Any]]]:
    exact: dict[tuple[str, str], Any] = {}
    globs: list[tuple[str, str, Any]] = []
    for key, value in prices.items():
        method, _, pattern = str(key).strip().partition(" ")
        pattern = pattern.strip()
        if not method or not (pattern.startswith("/") or "://" in pattern):
            raise ConfigurationError(
                'a price key is "METHOD /path", "METHOD https://host/path" (globs allowed) '
                f'or "* /path" for any method, got {key!r}'
            )
        price = (
            value if value is None or callable(value) else _amount(value, f"the price of {key!r}")
        )
        if _GLOB_CHARS.isdisjoint(pattern):
            exact[method.upper(), pattern] = price
        else:
            globs.append((method.upper(), pattern, price))
    return exact, globs


def _builtin_route(guard: SpendGuard) -> tuple[str, str] | None:
    """The guard's provider's billable route: (route, path under its base URL)."""
    provider = guard.provider
    if isinstance(provider, Hyper3D):
        route = RODIN_ROUTE
    elif isinstance(provider, Orthogonal):
        route = RUN_ROUTE
    else:
        return None
    return route, normal_path(urlsplit(provider.base_url).path + route).lower()


def normal_path(path: str) -> str:
    """``path`` as a server may read it: escapes decoded, ``;params``, empty and ``.``
    segments dropped, ``..`` resolved, no trailing slash. Decoding more than a server
    would only prices more requests, never fewer."""
    for _ in range(3):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for segment in path.split("/"):
        name = segment.partition(";")[0]
        if name in ("", "."):
            continue
        if name == "..":
            if segments:
                segments.pop()
            continue
        segments.append(name)
    return "/" + "/".join(segments)


def normal_url(scheme: str, netloc: str, path: str) -> str:
    """``scheme://host[:port]path`` with scheme and host lower-cased, no default port."""
    parts = urlsplit(f"{scheme}://{netloc}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = scheme.lower()
    suffix = "" if port is None or port == _DEFAULT_PORTS.get(scheme) else f":{port}"
    return f"{scheme}://{host}{suffix}{path}"


def _cause_of_402(message: str) -> str:
    """Orthogonal's three 402s, told apart by their message."""
    text = message.lower()
    if "limit" in text:
        if "key" in text:
            return "the API key's daily spend limit is reached"
        if "account" in text or "organization" in text:
            return "the account's daily spend limit is reached"
        return "a spend limit is reached"
    return "the account's credit is insufficient"


# -- bodies ----------------------------------------------------------------------------------


def _json_body(request: Outgoing, route: str) -> dict[str, Any]:
    raw = request.body(route)
    payload = decode(raw) if raw.strip() else {}
    if not isinstance(payload, dict):
        raise UnknownPrice(kind="request", name=route, reason="its body is not a JSON object")
    return payload


def _form_fields(request: Outgoing, route: str) -> dict[str, list[str]]:
    """The text fields of a multipart, urlencoded or JSON body (file parts skipped)."""
    raw = request.body(route)
    if not raw.strip():
        return {}
    content_type = request.header("Content-Type")
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart_fields(content_type, raw, route)
    if kind == "application/x-www-form-urlencoded":
        fields: dict[str, list[str]] = {}
        for name, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            fields.setdefault(name, []).append(value)
        return fields
    if kind == "application/json" or kind.endswith("+json"):
        return {
            name: [str(v) for v in value] if isinstance(value, list) else [str(value)]
            for name, value in _json_body(request, route).items()
            if value is not None
        }
    raise UnknownPrice(
        kind="request",
        name=route,
        reason=f"cannot read form fields from a {kind[:60] or 'untyped'} body",
    )


def _multipart_fields(content_type: str, raw: bytes, route: str) -> dict[str, list[str]]:
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if not boundary:
        raise UnknownPrice(kind="request", name=route, reason="multipart body without a boundary")
    fields: dict[str, list[str]] = {}
    for part in raw.split(b"--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, found, content = part.partition(b"\r\n\r\n")
        if not found:
            continue
        headers = Message()
        for line in head.decode("utf-8", "replace").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip()] = value.strip()
        field = headers.get_param("name", header="content-disposition")
        if field is None or headers.get_filename() is not None:
            continue
        text = collapse_rfc2231_value(field) if isinstance(field, tuple) else str(field)
        fields.setdefault(text, []).append(content.removesuffix(b"\r\n").decode("utf-8", "replace"))
    return fields


def _addon_names(values: list[str]) -> list[str]:
    """Addons as repeated fields, comma-separated, or a JSON-array string."""
    names: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise UnknownPrice(
                    kind="request", name="POST /api/v2/rodin", reason=f"addons {value[:80]!r}"
                )
        else:
            items = text.split(",")
        names.extend(item.strip() for item in items if item.strip())
    return names


def head_of(chunks: Iterable[bytes], close: Callable[[], object]) -> bytes:
    """At most the first :data:`ERROR_BODY_LIMIT` bytes of a refusal's body (what arrived,
    if the body breaks off), then ``close()``: for the requests and the sync httpx face."""
    raw = b""
    try:
        for chunk in chunks:
            raw += chunk
            if len(raw) >= ERROR_BODY_LIMIT:
                break
    except Exception:
        pass
    finally:
        close()
    return raw
