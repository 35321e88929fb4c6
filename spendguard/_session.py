"""Guarding raw HTTP: a ``requests`` adapter that prices each request and holds its cost."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from email.message import Message
from email.utils import collapse_rfc2231_value
from fnmatch import fnmatchcase
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
import urllib3
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.exceptions import ClosedPoolError, ConnectTimeoutError, MaxRetryError
from urllib3.util import Retry

from ._answer import MaskedHeader, Secret, decode, describe_error, scrub_http_logs
from ._errors import ConfigurationError, InsufficientCredits, SpendGuardError
from ._guard import SpendGuard
from ._hold import Hold
from ._http import scrub_error
from ._hyper3d import Hyper3D
from ._money import Amount, format_amount, to_amount
from ._orthogonal import Orthogonal
from .pricing import RODIN_PRICES, RodinPrices, UnknownPrice, parse_orthogonal_price

log = logging.getLogger("spendguard")

RequestCost: TypeAlias = Callable[[requests.PreparedRequest], Amount | None]
"""A callable pricing one ``PreparedRequest``: an amount, or ``None`` for free."""

RoutePrices: TypeAlias = Mapping[str, Amount | RequestCost | None]
"""``"METHOD pattern"`` to a fixed amount, a :data:`RequestCost`, or ``None`` (free)."""

_NO_RETRIES = Retry(0, read=False)
_GLOB_CHARS = frozenset("*?[")
_ERROR_BODY_LIMIT = 64 * 1024
_RODIN_ROUTE = "/api/v2/rodin"
_RUN_ROUTE = "/v1/run"
_DEFAULT_PORTS = {"http": 80, "https": 443}

# What sending a request holds, and whether its answer's ``price`` says what was charged.
_Quote = tuple[Decimal, bool]


class GuardedAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that refuses, before sending, what the account cannot pay.

    Mount it on a Session you already own, for the provider's URL or for everything::

        session.mount("https://api.hyper3d.com/", sg.GuardedAdapter(guard))

    **Pricing.** A request is priced by the first rule that matches:

    1. ``prices``: keys are ``"METHOD pattern"``. ``METHOD`` is an HTTP method or ``*``.
       A pattern starting with ``/`` is matched against the URL's path, one containing
       ``://`` against the whole URL without its query (``https://host/path``).
       Paths are normalised before matching: percent-escapes decoded, ``;params``,
       empty and ``.`` segments dropped, ``..`` resolved, no trailing ``/``; scheme and
       host lower-cased and default ports dropped. Patterns
       are :func:`fnmatch.fnmatchcase` globs (``*`` also crosses ``/``); a pattern without
       ``*``, ``?`` or ``[`` is an exact match and wins over globs, which are tried in
       the mapping's order. Values are an amount, a callable of the
       ``PreparedRequest`` returning an amount or ``None``, or ``None``: free.
    2. Built-ins, on any host (so a legacy host or a proxy is covered too), under the
       provider's base path, matched on the normalised path in any letter case (so
       ``//api/v2/rodin/``, ``/api/v2/rodin;v=2`` and ``/api/v2/%72odin`` are priced):
       for a :class:`~spendguard.Hyper3D` guard,
       ``POST /api/v2/rodin`` costs :func:`~spendguard.pricing.rodin_cost` of the body's
       ``tier`` and ``addons`` fields (multipart, urlencoded or JSON; addons repeated,
       comma-separated or a JSON-array string). For an :class:`~spendguard.Orthogonal`
       guard, ``POST /v1/run`` costs :meth:`Orthogonal.price` of its JSON ``api`` and
       ``path``; a dynamic price holds ``max_cost``.
    3. Anything else is free: it is sent untouched, without a balance lookup.

    **A priced request** holds its cost while in flight (``guard.spend``), and:

    - is refused with :class:`~spendguard.InsufficientCredits` before a connection is
      opened when the guard says the account cannot pay;
    - on a 2xx, settles at its cost (an Orthogonal ``/v1/run`` at the ``price`` its answer
      reports, unless ``stream=True``; when that price cannot be read, at the cost held)
      and always returns the response;
    - on a 402, gives the hold back, drops the guard's cached balance and raises
      :class:`~spendguard.InsufficientCredits` whose reason quotes the provider (for
      Orthogonal: insufficient credit, the key's or the account's daily limit) and whose
      ``available`` is a fresh lookup's (``None`` when that lookup fails);
    - on any other status, gives the hold back and returns the response as usual;
    - when the connection could not be opened (connect timeout, refused, DNS), gives the
      hold back and re-raises; when it failed after the request may have left (read
      timeout, connection dropped, anything else), it is "maybe charged": the hold is
      settled, so it counts until the guard's next balance lookup, and the error is
      re-raised.

    Nothing is ever retried: the adapter makes one attempt per request, as ``requests``
    does by default, and a retrying ``max_retries`` is refused.

    Args:
        guard: The guard that decides and holds.
        prices: Route prices, see above; they override the built-ins.
        max_cost: What to hold for a request whose price is dynamic (known only after
            the call). Without it such a request is refused with ConfigurationError.
        rodin_prices: The Rodin price table for the built-in; :data:`RODIN_PRICES`
            by default. Extend it to use ``Detail`` or ``Smooth``.
        pool_connections: As for ``HTTPAdapter``.
        pool_maxsize: As for ``HTTPAdapter``.
        pool_block: As for ``HTTPAdapter``.

    The ``Authorization`` header of every request it sends is replaced by an equal string
    whose ``repr`` shows four characters of the key at most, for the frames below.

    Raises:
        ConfigurationError: A price key or amount is malformed.
        TypeError: ``guard`` is not a :class:`~spendguard.SpendGuard`.
    """

    def __init__(
        self,
        guard: SpendGuard,
        prices: RoutePrices | None = None,
        *,
        max_cost: Amount | None = None,
        rodin_prices: RodinPrices | None = None,
        pool_connections: int = DEFAULT_POOLSIZE,
        pool_maxsize: int = DEFAULT_POOLSIZE,
        pool_block: bool = DEFAULT_POOLBLOCK,
    ) -> None:
        if not isinstance(guard, SpendGuard):
            raise TypeError(f"guard must be a spendguard.SpendGuard, got {type(guard).__name__}")
        if rodin_prices is not None and not isinstance(rodin_prices, RodinPrices):
            raise ConfigurationError(
                f"rodin_prices must be a spendguard.pricing.RodinPrices, "
                f"got {type(rodin_prices).__name__}"
            )
        self._guard = guard
        self._max_cost = None if max_cost is None else _amount(max_cost, "max_cost")
        self._rodin_prices = rodin_prices or RODIN_PRICES
        self._keys = tuple(prices or ())
        self._exact, self._globs = _routes(prices or {})
        self._builtin = _builtin_route(guard)
        scrub_http_logs()
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=_NO_RETRIES,
            pool_block=pool_block,
        )

    @property
    def guard(self) -> SpendGuard:
        """The guard that decides and holds."""
        return self._guard

    @property
    def max_cost(self) -> Decimal | None:
        """What a dynamically priced request holds, if anything."""
        return self._max_cost

    @property
    def max_retries(self) -> Retry:
        """Always no retries: a billable request is sent at most once."""
        return _NO_RETRIES

    @max_retries.setter
    def max_retries(self, value: Retry) -> None:
        if value is not _NO_RETRIES:
            raise ConfigurationError(
                "GuardedAdapter never retries: a billable request must not be sent twice; "
                "mount a retrying adapter for other routes instead"
            )

    def cost(self, request: requests.PreparedRequest) -> Decimal | None:
        """What sending ``request`` would hold, or ``None`` when it is free.

        Raises:
            UnknownPrice: The request is billable but cannot be priced (an unknown
                Rodin tier, a dynamic price without ``max_cost``, an unreadable body).
            ProviderError: Orthogonal's price could not be looked up.
        """
        quote = self._quote(request)
        return None if quote is None else quote[0]

    def send(  # noqa: PLR0917 - HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        """Price ``request``, hold its cost and send it once (see the class docstring).

        Raises:
            InsufficientCredits: The guard refused (nothing was sent), or the provider
                answered 402.
            UnknownPrice: A billable request that cannot be priced (nothing was sent).
            requests.RequestException: As ``HTTPAdapter.send``, after the hold is ended.
        """
        _mask_authorization(request)
        # Registered while the request is in flight: log records of the HTTP stack that
        # quote this key (an echoed status line) are scrubbed.
        key = _bearer_key(request)  # noqa: F841
        quote = self._quote(request)
        if quote is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        cost, priced_by_answer = quote
        refused: str | None = None
        unread: Exception | None = None
        with self._guard.spend(cost) as hold:
            try:
                response = super().send(request, stream, timeout, verify, cert, proxies)
            except BaseException as exc:
                self._end_after_failure(hold, request, exc)
                failure = _scrubbed(exc, request)
                if failure is exc:
                    raise
                raise failure from None
            status = response.status_code
            if 200 <= status < 300:
                charged = cost
                if priced_by_answer and not stream:
                    charged, unread = self._charged(response, cost)
                hold.settle(charged)
            elif status == 402:
                hold.release()
                refused = self._payment_message(request, response)
            else:
                hold.release()
        if refused is not None:
            refusal = self._payment_refusal(cost, refused)
            log.warning("%s; the cached balance is dropped", refusal)
            raise refusal
        if unread is not None:
            raise _scrubbed(unread, request) from None
        if not stream:
            # Read here, not in requests' Session.send, so that a broken body's error is
            # scrubbed of the key like every other.
            try:
                _ = response.content
            except Exception as exc:
                response.close()
                failure = _scrubbed(exc, request)
                if failure is exc:
                    raise
                raise failure from None
        return response

    def __repr__(self) -> str:
        max_cost = "None" if self._max_cost is None else repr(str(self._max_cost))
        return (
            f"<{type(self).__name__} {self._guard.provider.name} routes={list(self._keys)!r} "
            f"max_cost={max_cost}>"
        )

    # -- pricing -----------------------------------------------------------------------

    def _quote(self, request: requests.PreparedRequest) -> _Quote | None:
        method = (request.method or "GET").upper()
        parts = urlsplit(request.url or "")
        path = _normal_path(parts.path)
        url = _normal_url(parts.scheme, parts.netloc, path)
        found, price = self._route_price(method, path, url)
        if found:
            if callable(price):
                price = price(request)
            return (
                None if price is None else (_amount(price, f"the price of {method} {path}"), False)
            )
        if self._builtin is None or method != "POST" or path.lower() != self._builtin[1]:
            return None
        if self._builtin[0] == _RODIN_ROUTE:
            return self._rodin_cost(request), False
        return self._run_cost(request), True

    def _route_price(self, method: str, path: str, url: str) -> tuple[bool, Any]:
        for verb in (method, "*"):
            for target in (path, url):
                if (verb, target) in self._exact:
                    return True, self._exact[verb, target]
        for verb, pattern, price in self._globs:
            if verb in (method, "*") and fnmatchcase(url if "://" in pattern else path, pattern):
                return True, price
        return False, None

    def _rodin_cost(self, request: requests.PreparedRequest) -> Decimal:
        fields = _form_fields(request, "POST /api/v2/rodin")
        tiers = list(dict.fromkeys(t.strip() for t in fields.get("tier", []) if t.strip()))
        addons = _addon_names(fields.get("addons", []))
        # Several tiers in one form: which one the server reads is not documented, so
        # hold the dearest.
        return max(self._rodin_prices.cost(tier, addons) for tier in tiers or ["Regular"])

    def _run_cost(self, request: requests.PreparedRequest) -> Decimal:
        provider = self._guard.provider
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
        if self._max_cost is None:
            raise UnknownPrice(
                kind="request",
                name="POST /v1/run",
                reason=(
                    f"orthogonal: {api} {path} has a dynamic price, known only after the "
                    "call, so the guard cannot tell whether the account can pay for it; "
                    "pass max_cost= to hold an upper bound for such calls"
                ),
            )
        return self._max_cost

    # -- outcomes ----------------------------------------------------------------------

    def _charged(
        self, response: requests.Response, cost: Decimal
    ) -> tuple[Decimal, Exception | None]:
        """What an Orthogonal ``/v1/run`` answer says was charged, else ``cost``; and the
        error that broke off its body, if one did (raised once the hold is settled, as
        ``requests`` would raise it reading the body).

        An answer that arrived but says nothing usable (no price, ``1e999999999``, HTML)
        settles at ``cost``: the request was sent and paid for, so the caller gets it.
        """
        try:
            content = response.content
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            return cost, exc
        try:
            body = decode(content)
            price = parse_orthogonal_price(body.get("price")) if isinstance(body, dict) else None
        except SpendGuardError:
            price = None
        return (cost if price is None else price), None

    def _end_after_failure(
        self, hold: Hold, request: requests.PreparedRequest, exc: BaseException
    ) -> None:
        if _never_sent(exc):
            hold.release()
            return
        hold.settle()
        log.warning(
            "%s: %s %s failed after it may have been sent (%s); its %s stays counted as "
            "spent until the next balance lookup",
            self._guard.provider.name,
            request.method,
            urlsplit(request.url or "").path,
            type(exc).__name__,
            format_amount(hold.amount, self._guard.unit),
        )

    def _payment_message(
        self, request: requests.PreparedRequest, response: requests.Response
    ) -> str:
        """The provider's words on a 402, scrubbed of the key, then cut."""
        raw = b""
        try:
            for chunk in response.iter_content(8192):
                raw += chunk
                if len(raw) >= _ERROR_BODY_LIMIT:
                    break
        except Exception:
            pass
        finally:
            response.close()
        key = _bearer_key(request)
        if key is not None:
            raw = key.scrub_bytes(raw)
        body = decode(raw)
        message, _ = describe_error(body if key is None else key.scrub_json(body), raw, key)
        return message

    def _payment_refusal(self, cost: Decimal, message: str) -> InsufficientCredits:
        """A 402 as InsufficientCredits, with what the account really has now (one fresh
        lookup), or ``available=None`` when that cannot be had."""
        self._guard.invalidate()
        available: Decimal | None
        try:
            available = self._guard.available()
        except SpendGuardError:
            available = None
        return InsufficientCredits(
            required=cost,
            available=available,
            unit=self._guard.unit,
            provider=self._guard.provider.name,
            reason=f"{_cause_of_402(message)}; the provider answered HTTP 402: {message}",
        )


class GuardedSession(requests.Session):
    """A ``requests.Session`` whose billable requests are priced and guarded before sending.

    Every ``http://`` and ``https://`` request goes through one :class:`GuardedAdapter`;
    see it for the pricing rules and what happens on 2xx, 402, other statuses and
    connection errors. Free requests (balance checks, status polls, downloads) pass
    straight through. Nothing is retried.

    >>> with guard.session() as http:  # doctest: +SKIP
    ...     http.post(url + "/api/v2/rodin", data={"prompt": "a chair", "tier": "Regular"},
    ...               headers={"Authorization": f"Bearer {key}"})

    Args:
        guard: The guard that decides and holds.
        prices: Route prices (``"METHOD pattern"`` to an amount, a callable or ``None``).
        max_cost: What to hold for a dynamically priced request.
        rodin_prices: The Rodin price table for the built-in pricing.

    Raises:
        ConfigurationError: A price key or amount is malformed.
    """

    def __init__(
        self,
        guard: SpendGuard,
        prices: RoutePrices | None = None,
        *,
        max_cost: Amount | None = None,
        rodin_prices: RodinPrices | None = None,
    ) -> None:
        adapter = GuardedAdapter(guard, prices, max_cost=max_cost, rodin_prices=rodin_prices)
        super().__init__()
        self._adapter = adapter
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    @property
    def guard(self) -> SpendGuard:
        """The guard that decides and holds."""
        return self._adapter.guard

    @property
    def adapter(self) -> GuardedAdapter:
        """The adapter doing the work, e.g. to price a request with ``cost()``."""
        return self._adapter

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._adapter!r}>"


# -- helpers -------------------------------------------------------------------------------


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
        route = _RODIN_ROUTE
    elif isinstance(provider, Orthogonal):
        route = _RUN_ROUTE
    else:
        return None
    return route, _normal_path(urlsplit(provider.base_url).path + route).lower()


def _normal_path(path: str) -> str:
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


def _normal_url(scheme: str, netloc: str, path: str) -> str:
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


def _scrubbed(exc: BaseException, request: requests.PreparedRequest) -> BaseException:
    """``exc`` with its frames' locals cleared; a ``requests`` error whose text holds part
    of the request's key is replaced by one of the same type with that text scrubbed."""
    key = _bearer_key(request)
    clean = scrub_error(exc, key)
    if clean is exc or key is None or not isinstance(exc, requests.RequestException):
        return exc
    copy = type(exc)(key.scrub(str(exc), 2000), request=exc.request, response=exc.response)
    return copy.with_traceback(exc.__traceback__)


def _mask_authorization(request: requests.PreparedRequest) -> None:
    value = request.headers.get("Authorization")
    if isinstance(value, str) and not isinstance(value, MaskedHeader):
        request.headers["Authorization"] = MaskedHeader(value)


def _never_sent(exc: BaseException) -> bool:
    """Whether the request surely never left: no connection could be opened."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.InvalidURL):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # NewConnectionError (refused, DNS) is a ConnectTimeoutError too.
    return isinstance(reason, ConnectTimeoutError | ClosedPoolError)


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


def _bearer_key(request: requests.PreparedRequest) -> Secret | None:
    value = _header(request, "Authorization")
    scheme, _, key = value.partition(" ")
    return Secret(key.strip()) if scheme.lower() == "bearer" and key.strip() else None


def _header(request: requests.PreparedRequest, name: str) -> str:
    value = request.headers.get(name, "")
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _body_bytes(request: requests.PreparedRequest, route: str) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes):
        return body
    raise UnknownPrice(
        kind="request",
        name=route,
        reason=(
            f"its body is streamed ({type(body).__name__}), so its fields cannot be read "
            "before sending; give its price in prices="
        ),
    )


def _json_body(request: requests.PreparedRequest, route: str) -> dict[str, Any]:
    raw = _body_bytes(request, route)
    payload = decode(raw) if raw.strip() else {}
    if not isinstance(payload, dict):
        raise UnknownPrice(kind="request", name=route, reason="its body is not a JSON object")
    return payload


def _form_fields(request: requests.PreparedRequest, route: str) -> dict[str, list[str]]:
    """The text fields of a multipart, urlencoded or JSON body (file parts skipped)."""
    raw = _body_bytes(request, route)
    if not raw.strip():
        return {}
    content_type = _header(request, "Content-Type")
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
