"""Guarding raw HTTP: a ``requests`` adapter that prices each request and holds its cost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TypeAlias

import requests
import urllib3
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from urllib3.exceptions import ClosedPoolError, ConnectTimeoutError, MaxRetryError
from urllib3.util import Retry

from ._answer import MaskedHeader, Secret, scrub_http_logs
from ._billable import (
    PriceList,
    bearer_key,
    charged_by,
    end_on_answer,
    end_on_failure,
    head_of,
    payment_message,
    payment_refusal,
)
from ._errors import ConfigurationError
from ._guard import SpendGuard
from ._http import scrub_error
from ._money import Amount
from .pricing import RodinPrices, UnknownPrice

RequestCost: TypeAlias = Callable[[requests.PreparedRequest], Amount | None]
"""A callable pricing one ``PreparedRequest``: an amount, or ``None`` for free."""

RoutePrices: TypeAlias = Mapping[str, Amount | RequestCost | None]
"""``"METHOD pattern"`` to a fixed amount, a :data:`RequestCost`, or ``None`` (free)."""

_NO_RETRIES = Retry(0, read=False)
_RECENT_KEYS = 16


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
        rodin_prices: The Rodin price table for the built-in;
            :data:`~spendguard.pricing.RODIN_PRICES` by default. Extend it to use ``Detail``
            or ``Smooth``.
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
        self._prices = PriceList(guard, prices, max_cost, rodin_prices)
        self._guard = guard
        # The keys recently sent, kept alive: a redirect the Session follows after a
        # billable answer is sent without the key, to wherever the answer said, and its
        # URL may echo the key into errors and the HTTP stack's logs.
        self._recent: dict[str, Secret] = {}
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
        return self._prices.max_cost

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
        quote = self._prices.quote(_Prepared(request))
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
        key = _bearer_key(request)
        if key is not None:
            self._remember(key)
        outgoing = _Prepared(request)
        quote = self._prices.quote(outgoing)
        if quote is None:
            try:
                return super().send(request, stream, timeout, verify, cert, proxies)
            except Exception as exc:
                failure = self._scrubbed_free(exc, request)
                if failure is exc:
                    raise
                raise failure from None
        cost, priced_by_answer = quote
        refused: str | None = None
        unread: Exception | None = None
        with self._guard.spend(cost) as hold:
            try:
                response = super().send(request, stream, timeout, verify, cert, proxies)
            except BaseException as exc:
                end_on_failure(self._guard, hold, outgoing, exc, never_sent=_never_sent(exc))
                failure = _scrubbed(exc, request)
                if failure is exc:
                    raise
                raise failure from None
            charged: Decimal | None = None
            if 200 <= response.status_code < 300 and priced_by_answer and not stream:
                try:
                    charged = charged_by(response.content)
                except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                    # Raised once the hold is settled, as requests would raise it reading
                    # the body.
                    response.close()
                    unread = exc
            if end_on_answer(hold, response.status_code, charged):
                refused = payment_message(_error_body(response), key)
        if refused is not None:
            raise payment_refusal(self._guard, cost, refused)
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
        return self._prices.describe(type(self).__name__)

    def _remember(self, key: Secret) -> None:
        recent = self._recent
        if key.reveal() not in recent:
            if len(recent) >= _RECENT_KEYS:
                del recent[next(iter(recent))]
            recent[key.reveal()] = key

    def _scrubbed_free(self, exc: Exception, request: requests.PreparedRequest) -> BaseException:
        """:func:`_scrubbed`, for a free request: with its own key, else with each key
        this adapter sent recently."""
        if _bearer_key(request) is not None:
            return _scrubbed(exc, request)
        for key in list(self._recent.values()):
            failure = _scrubbed(exc, request, key)
            if failure is not exc:
                return failure
        return exc


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


class _Prepared:
    """A ``PreparedRequest`` as the pricing core reads it."""

    __slots__ = ("native",)

    def __init__(self, request: requests.PreparedRequest) -> None:
        self.native = request

    @property
    def method(self) -> str:
        return (self.native.method or "GET").upper()

    @property
    def url(self) -> str:
        return self.native.url or ""

    def header(self, name: str) -> str:
        return _header(self.native, name)

    def body(self, route: str) -> bytes:
        body = self.native.body
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


def _error_body(response: requests.Response) -> bytes:
    """At most the first ``ERROR_BODY_LIMIT`` bytes of a refusal's body, then closed."""
    return head_of(response.iter_content(8192), response.close)


def _scrubbed(
    exc: BaseException, request: requests.PreparedRequest, key: Secret | None = None
) -> BaseException:
    """``exc`` with its frames' locals cleared; a ``requests`` error whose text holds part
    of the key (the request's, by default) is replaced by one of the same type with that
    text scrubbed."""
    key = key or _bearer_key(request)
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


def _bearer_key(request: requests.PreparedRequest) -> Secret | None:
    return bearer_key(_header(request, "Authorization"))


def _header(request: requests.PreparedRequest, name: str) -> str:
    value = request.headers.get(name, "")
    return value.decode("latin-1") if isinstance(value, bytes) else value
