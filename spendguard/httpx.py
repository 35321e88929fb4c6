"""Guarding httpx clients: transports that price each request and hold its cost.

Needs the ``httpx`` extra (``pip install 'spendguard-preflight[httpx]'``)::

    import httpx
    from spendguard.httpx import AsyncGuardedTransport

    async with httpx.AsyncClient(transport=AsyncGuardedTransport(guard)) as client:
        await client.post(url, data={"prompt": "a chair", "tier": "Regular"})

The pricing and the outcome rules are those of :class:`~spendguard.GuardedAdapter`, from
one shared core: the same route table (``prices=``), the same built-in prices (Rodin from
the form's ``tier`` and ``addons``, Orthogonal ``/v1/run`` from ``/v1/details``), and the
same outcomes (refused before sending; held while in flight; a 2xx settles, an Orthogonal
``/v1/run`` at the ``price`` its answer states; a 402 releases and raises
:class:`~spendguard.InsufficientCredits`; a request that never connected releases; a read
timeout stays counted). The transports never retry a billable request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "spendguard.httpx needs httpx: pip install 'spendguard-preflight[httpx]'"
    ) from exc

from ._answer import Secret, scrub_http_logs
from ._billable import (
    ERROR_BODY_LIMIT,
    PriceList,
    RoutePrices,
    bearer_key,
    charged_by,
    end_on_answer,
    end_on_failure,
    head_of,
    payment_message,
    payment_refusal,
)
from ._guard import SpendGuard
from ._http import scrub_error
from ._money import Amount
from .pricing import RodinPrices, UnknownPrice

__all__ = ["AsyncGuardedTransport", "GuardedTransport"]

_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)
_HTTPCORE_LOG = logging.getLogger("httpcore.http11")
_HTTPX_LOG = logging.getLogger("httpx")
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)

try:  # httpx's multipart body: re-readable, so it may be read for pricing before sending
    from httpx._multipart import MultipartStream as _Multipart
except ImportError:  # pragma: no cover - a future httpx
    _Multipart = ()  # type: ignore[assignment,misc]


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that refuses, before sending, what the account cannot pay.

    Pass it as ``transport=`` or in ``mounts=`` of an ``httpx.Client``::

        client = httpx.Client(transport=GuardedTransport(guard))
        client = httpx.Client(mounts={"https://api.hyper3d.com": GuardedTransport(guard)})

    Pricing and outcomes are :class:`~spendguard.GuardedAdapter`'s; a price callable in
    ``prices`` receives the ``httpx.Request``. A billable request's body is read before
    sending (a multipart body with files included); one streamed from a generator cannot
    be priced and raises :class:`~spendguard.pricing.UnknownPrice`. The answer of an
    Orthogonal ``/v1/run`` is read before it is returned, for its ``price``.

    Args:
        guard: The guard that decides and holds.
        transport: The transport that sends; a plain ``httpx.HTTPTransport()`` by default.
        prices: ``"METHOD /path"`` (or a glob, or a whole URL) to an amount, a callable of
            the ``httpx.Request``, or ``None`` for free.
        rodin_prices: The Rodin price table for the built-in pricing.
        max_cost: What to hold for a request whose price is dynamic.

    Raises:
        ConfigurationError: A price key or amount is malformed.
        TypeError: ``guard`` is not a :class:`~spendguard.SpendGuard`.
    """

    def __init__(
        self,
        guard: SpendGuard,
        transport: httpx.BaseTransport | None = None,
        *,
        prices: RoutePrices | None = None,
        rodin_prices: RodinPrices | None = None,
        max_cost: Amount | None = None,
    ) -> None:
        self._prices = PriceList(guard, prices, max_cost, rodin_prices)
        self._transport = httpx.HTTPTransport() if transport is None else transport
        scrub_http_logs(_LOGGERS)

    @property
    def guard(self) -> SpendGuard:
        """The guard that decides and holds."""
        return self._prices.guard

    def cost(self, request: httpx.Request) -> Decimal | None:
        """What sending ``request`` would hold, or ``None`` when it is free.

        Raises:
            UnknownPrice: The request is billable but cannot be priced.
            ProviderError: Orthogonal's price could not be looked up.
        """
        route = self._prices.route(request.method.upper(), str(request.url))
        if route.free:
            return None
        _read_multipart(request)
        quote = self._prices.quote(_Request(request), route)
        return None if quote is None else quote[0]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Price ``request``, hold its cost and send it once.

        Raises:
            InsufficientCredits: The guard refused (nothing was sent), or the provider
                answered 402.
            UnknownPrice: A billable request that cannot be priced (nothing was sent).
            httpx.HTTPError: As the wrapped transport raises it, after the hold is ended.
        """
        prices = self._prices
        route = prices.route(request.method.upper(), str(request.url))
        if route.free:
            return self._transport.handle_request(request)
        key = _logged_key(request)
        _read_multipart(request)
        outgoing = _Request(request)
        quote = prices.quote(outgoing, route)
        if quote is None:
            return self._transport.handle_request(request)
        cost, priced_by_answer = quote
        guard = prices.guard
        refused: str | None = None
        unread: Exception | None = None
        with guard.spend(cost) as hold:
            try:
                response = self._transport.handle_request(request)
            except BaseException as exc:
                end_on_failure(guard, hold, outgoing, exc, never_sent=isinstance(exc, _NEVER_SENT))
                raise _scrubbed(exc, key or _key(request)) from None
            charged: Decimal | None = None
            if 200 <= response.status_code < 300 and priced_by_answer:
                try:
                    charged = charged_by(response.read())
                except (httpx.HTTPError, OSError) as exc:
                    response.close()
                    unread = exc
            if end_on_answer(hold, response.status_code, charged):
                refused = payment_message(_error_body(response), key or _key(request))
        if refused is not None:
            raise payment_refusal(guard, cost, refused)
        if unread is not None:
            raise _scrubbed(unread, key or _key(request)) from None
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()

    def __repr__(self) -> str:
        return self._prices.describe(type(self).__name__)


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """:class:`GuardedTransport` for ``httpx.AsyncClient``; it never blocks the event loop.

    A balance lookup runs in a worker thread (``async with guard.spend(...)``), and so do
    an Orthogonal price lookup (``/v1/details``) and the fresh lookup after a 402. A task
    cancelled before its request is sent holds nothing; one cancelled while its request is
    in flight has its cost counted as spent (it may have been charged) and holds nothing.

    Args:
        guard: The guard that decides and holds.
        transport: The transport that sends; a plain ``httpx.AsyncHTTPTransport()`` by
            default.
        prices: As for :class:`GuardedTransport`.
        rodin_prices: The Rodin price table for the built-in pricing.
        max_cost: What to hold for a request whose price is dynamic.

    Raises:
        ConfigurationError: A price key or amount is malformed.
        TypeError: ``guard`` is not a :class:`~spendguard.SpendGuard`.
    """

    def __init__(
        self,
        guard: SpendGuard,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        prices: RoutePrices | None = None,
        rodin_prices: RodinPrices | None = None,
        max_cost: Amount | None = None,
    ) -> None:
        self._prices = PriceList(guard, prices, max_cost, rodin_prices)
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport
        scrub_http_logs(_LOGGERS)

    @property
    def guard(self) -> SpendGuard:
        """The guard that decides and holds."""
        return self._prices.guard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Price ``request``, hold its cost and send it once.

        Raises:
            InsufficientCredits: The guard refused (nothing was sent), or the provider
                answered 402.
            UnknownPrice: A billable request that cannot be priced (nothing was sent).
            httpx.HTTPError: As the wrapped transport raises it, after the hold is ended.
        """
        prices = self._prices
        route = prices.route(request.method.upper(), str(request.url))
        if route.free:
            return await self._transport.handle_async_request(request)
        key = _logged_key(request)
        if isinstance(request.stream, _Multipart):
            await request.aread()
        outgoing = _Request(request)
        if route.looks_up:
            quote = await asyncio.to_thread(prices.quote, outgoing, route)
        else:
            quote = prices.quote(outgoing, route)
        if quote is None:
            return await self._transport.handle_async_request(request)
        cost, priced_by_answer = quote
        guard = prices.guard
        refused: str | None = None
        unread: Exception | None = None
        async with guard.spend(cost) as hold:
            try:
                response = await self._transport.handle_async_request(request)
            except BaseException as exc:
                end_on_failure(guard, hold, outgoing, exc, never_sent=isinstance(exc, _NEVER_SENT))
                raise _scrubbed(exc, key or _key(request)) from None
            charged: Decimal | None = None
            try:
                if 200 <= response.status_code < 300 and priced_by_answer:
                    try:
                        charged = charged_by(await response.aread())
                    except (httpx.HTTPError, OSError) as exc:
                        unread = exc
                        await response.aclose()
                if end_on_answer(hold, response.status_code, charged):
                    refused = payment_message(await _aerror_body(response), key or _key(request))
            except BaseException:
                await _aclose_quietly(response)
                raise
        if refused is not None:
            raise await asyncio.to_thread(payment_refusal, guard, cost, refused)
        if unread is not None:
            raise _scrubbed(unread, key or _key(request)) from None
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return self._prices.describe(type(self).__name__)


_TRANSPORT_OPTIONS = ("transport", "prices", "rodin_prices", "max_cost")


def _client(guard: SpendGuard, kwargs: dict[str, Any]) -> httpx.Client:
    """``guard.httpx_client(**kwargs)``: the transport's options go to the transport."""
    options = {name: kwargs.pop(name) for name in _TRANSPORT_OPTIONS if name in kwargs}
    return httpx.Client(transport=GuardedTransport(guard, **options), **kwargs)


def _async_client(guard: SpendGuard, kwargs: dict[str, Any]) -> httpx.AsyncClient:
    """``guard.async_httpx_client(**kwargs)``: as :func:`_client`."""
    options = {name: kwargs.pop(name) for name in _TRANSPORT_OPTIONS if name in kwargs}
    return httpx.AsyncClient(transport=AsyncGuardedTransport(guard, **options), **kwargs)


class _Request:
    """An ``httpx.Request`` as the pricing core reads it."""

    __slots__ = ("native",)

    def __init__(self, request: httpx.Request) -> None:
        self.native = request

    @property
    def method(self) -> str:
        return self.native.method.upper()

    @property
    def url(self) -> str:
        return str(self.native.url)

    def header(self, name: str) -> str:
        value: str = self.native.headers.get(name, "")
        return value

    def body(self, route: str) -> bytes:
        try:
            return self.native.content
        except httpx.RequestNotRead:
            raise UnknownPrice(
                kind="request",
                name=route,
                reason=(
                    f"its body is streamed ({type(self.native.stream).__name__}), so its "
                    "fields cannot be read before sending; give its price in prices="
                ),
            ) from None


def _key(request: httpx.Request) -> Secret | None:
    return bearer_key(request.headers.get("Authorization", ""))


def _logged_key(request: httpx.Request) -> Secret | None:
    """The request's key, kept alive while it is in flight when the HTTP stack logs what
    it receives (httpcore's DEBUG records quote the answer's headers, httpx's INFO ones
    its reason phrase; either may echo the key, and records are scrubbed of live keys);
    else ``None``: a key is made only when a message needs it, which saves a fifth of
    the guard's cost per request."""
    if _HTTPCORE_LOG.isEnabledFor(logging.DEBUG) or _HTTPX_LOG.isEnabledFor(logging.INFO):
        return _key(request)
    return None


def _read_multipart(request: httpx.Request) -> None:
    if isinstance(request.stream, _Multipart):
        request.read()


def _error_body(response: httpx.Response) -> bytes:
    """At most the first ``ERROR_BODY_LIMIT`` bytes of a refusal's body, then closed."""
    return head_of(response.iter_bytes(8192), response.close)


async def _aerror_body(response: httpx.Response) -> bytes:
    raw = b""
    try:
        async for chunk in response.aiter_bytes(8192):
            raw += chunk
            if len(raw) >= ERROR_BODY_LIMIT:
                break
    except Exception:
        pass
    finally:
        await _aclose_quietly(response)
    return raw


async def _aclose_quietly(response: httpx.Response) -> None:
    with contextlib.suppress(Exception):
        await response.aclose()


def _scrubbed(exc: BaseException, key: Secret | None) -> BaseException:
    """``exc`` with its frames' locals cleared; an httpx error whose text holds part of the
    request's key is replaced by one of the same type with that text scrubbed."""
    clean = scrub_error(exc, key)
    if clean is exc or key is None or not isinstance(exc, httpx.RequestError):
        return exc
    copy: Any = type(exc)(key.scrub(str(exc), 2000), request=getattr(exc, "_request", None))
    return copy.with_traceback(exc.__traceback__)  # type: ignore[no-any-return]
