"""HTTP plumbing shared by the providers: sessions with retries and a deadline per attempt,
one place that translates ``requests`` errors, capped bodies, keys that never show, and URL
safety. What an answer means is :mod:`spendguard._answer`'s job."""

from __future__ import annotations

import contextvars
import email.utils
import functools
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.response
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ._answer import RETRY_STATUSES, MaskedHeader, Secret, outcome, read, scrub_http_logs
from ._errors import BalanceUnavailable, ConfigurationError, ProviderError

log = logging.getLogger("spendguard")

MAX_BODY_BYTES = 1 << 20
"""Provider answers larger than this are refused: a balance is a few dozen bytes."""

DEFAULT_RETRIES = 2
"""Retries after the first attempt for lookups (connection errors, 429, 5xx)."""

_LOOPBACK_NAMES = frozenset({"localhost"})


RETRY_AFTER_CAP = 10.0
"""The longest wait between two attempts, whatever ``Retry-After`` asks (and never more
than the provider's ``timeout``)."""

_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?")


class _CappedRetry(Retry):
    """``Retry`` that honours ``Retry-After`` but never waits longer than ``wait_cap``, and
    reads any header value without failing: ``1.5`` is a second and a half; ``-1``, ``abc``
    or a date Python cannot represent mean "no advice" (the backoff applies); anything
    larger than the cap, a date far in the future included, is the cap."""

    def __init__(self, *args: Any, wait_cap: float = RETRY_AFTER_CAP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait_cap = wait_cap

    def new(self, **kwargs: Any) -> _CappedRetry:
        kwargs.setdefault("wait_cap", self.wait_cap)
        return super().new(**kwargs)

    def parse_retry_after(self, retry_after: str) -> float:
        text = retry_after.strip()
        if _SECONDS.fullmatch(text):
            whole, _, fraction = text.partition(".")
            if len(whole.lstrip("0")) > 6:
                return self.wait_cap
            seconds = float(f"{whole}.{fraction[:6]}")
        else:
            try:
                when = email.utils.parsedate_tz(text)
                if when is None:
                    return 0.0
                seconds = email.utils.mktime_tz(when) - time.time()
            except (ValueError, OverflowError, ArithmeticError, IndexError, TypeError):
                return 0.0
        return max(0.0, min(seconds, self.wait_cap))


class _Exchange:
    """One request's attempts, each given ``timeout`` seconds in all: connect, status line,
    headers and body. The socket timeout bounds each read, not their sum: a server sending
    one byte per read would hold the caller for as long as it likes. So the watchdog shuts
    the attempt's socket down when its time is up."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.expired = False
        self.armed = False
        self._lock = threading.Lock()
        self._attempt = 0
        self._connection: urllib3.connection.HTTPConnection | None = None

    def begin(self, connection: urllib3.connection.HTTPConnection) -> None:
        """Start the clock of an attempt on ``connection``."""
        with self._lock:
            self._attempt += 1
            self._connection = connection
            self.expired = False
            self.armed = True
            attempt = self._attempt
        _WATCHDOG.watch(time.monotonic() + self.timeout, self, attempt)

    def check(self, connection: urllib3.connection.HTTPConnection) -> None:
        """Cut ``connection`` if its time ran out before it had a socket."""
        if self.expired:
            _shut(connection)

    def finish(self) -> None:
        """Stop the clock: the answer is read (or abandoned)."""
        with self._lock:
            self._attempt = -1
            self._connection = None

    def current(self, attempt: int) -> bool:
        """Whether ``attempt`` is still running."""
        return self._attempt == attempt

    def expire(self, attempt: int) -> None:
        """Cut ``attempt`` if it is still running."""
        with self._lock:
            connection = self._connection if self._attempt == attempt else None
            if connection is None:
                return
            self.expired = True
        _shut(connection)


class _Watchdog:
    """One daemon thread that ends the attempts whose time is up (a heap of deadlines):
    starting a thread per attempt would cost more than the lookup itself."""

    def __init__(self) -> None:
        self._ready = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, _Exchange, int]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, when: float, exchange: _Exchange, attempt: int) -> None:
        """Call ``exchange.expire(attempt)`` at ``when`` (monotonic seconds)."""
        with self._ready:
            heapq.heappush(self._due, (when, next(self._order), exchange, attempt))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="spendguard-watchdog", daemon=True
                )
                self._thread.start()
            if self._due[0][2] is exchange:
                self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while True:
                    while self._due and not self._due[0][2].current(self._due[0][3]):
                        heapq.heappop(self._due)
                    if not self._due:
                        self._ready.wait()
                        continue
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, exchange, attempt = heapq.heappop(self._due)
                        break
                    self._ready.wait(wait)
            exchange.expire(attempt)


_WATCHDOG = _Watchdog()


def _shut(connection: urllib3.connection.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "spendguard_exchange", default=None
)


class _BoundedHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose attempts end when the current :class:`_Exchange` says so."""

    _connected_for: _Exchange | None = None

    def connect(self) -> None:
        # A TLS connection is opened before request(): its handshake is on the clock too.
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.begin(self)
            self._connected_for = exchange
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        exchange = _EXCHANGE.get()
        if exchange is not None and self._connected_for is not exchange:
            exchange.begin(self)
        self._connected_for = None
        super().request(*args, **kwargs)

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.check(self)
        return super().getresponse()


class _BoundedHTTPSConnection(_BoundedHTTPConnection, urllib3.connection.HTTPSConnection):
    """:class:`_BoundedHTTPConnection` over TLS."""


class _BoundedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _BoundedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


class _BoundedAdapter(HTTPAdapter):
    """``HTTPAdapter`` whose connections keep each attempt within its time."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _BoundedHTTPPool,
            "https": _BoundedHTTPSPool,
        }


def build_session(
    retries: int = DEFAULT_RETRIES, timeout: float = RETRY_AFTER_CAP
) -> requests.Session:
    """A session that retries read-only lookups with exponential backoff and jitter.

    Connection errors, 429 and 5xx are retried up to ``retries`` times, honouring
    ``Retry-After`` (seconds or an HTTP date); no wait between attempts is longer than
    ``timeout`` or 10 s. Redirects are never followed. Under :func:`request_json`, each
    attempt (connect, status line, headers, body) ends within ``timeout`` seconds, so a
    lookup ends within ``timeout × (2 × retries + 1)`` seconds.
    """
    wait_cap = min(RETRY_AFTER_CAP, timeout)
    retry = _CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        redirect=0,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=0.2,
        backoff_max=min(5.0, wait_cap),
        backoff_jitter=0.1,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
        wait_cap=wait_cap,
    )
    scrub_http_logs()
    session = requests.Session()
    adapter = _BoundedAdapter(max_retries=retry, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def resolve_key(api_key: str | Secret | None, env_vars: tuple[str, ...], provider: str) -> Secret:
    """The explicit key, else the first environment variable set, else a ConfigurationError.

    The key is wrapped in a :class:`Secret` before anything can go wrong with it, so no
    frame of a traceback shows it.
    """
    secret = conceal(api_key)
    del api_key
    if secret is None:
        secret = next(
            (conceal(os.environ[v]) for v in env_vars if os.environ.get(v, "").strip()), None
        )
    if secret is None:
        names = " or ".join(env_vars)
        raise ConfigurationError(f"{provider}: no API key; pass api_key= or set {names}")
    if not _usable_key(secret):
        raise ConfigurationError(
            f"{provider}: the API key is empty, or contains whitespace or a character "
            "outside printable ASCII (a pasted dash or quote?): it cannot go in a header"
        )
    return secret


def conceal(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value).strip())


def _usable_key(secret: Secret) -> bool:
    key = secret.reveal()
    return bool(key) and key.isascii() and key.isprintable() and " " not in key


def resolve_base_url(base_url: str | None, env_var: str, default: str, provider: str) -> str:
    """The base URL to use; plain ``http://`` only for loopback hosts."""
    url = (base_url or os.environ.get(env_var, "").strip() or default).rstrip("/")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{provider}: invalid base URL {url!r}: {exc}") from None
    if not host or parts.scheme not in ("http", "https"):
        raise ConfigurationError(f"{provider}: base URL must be https://host[:port], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{provider}: base URL must not carry credentials, a query or a fragment"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"{provider}: refusing plain http:// to {host}; the API key would travel "
            "unencrypted (http:// is allowed only for 127.0.0.1, localhost and ::1)"
        )
    return url


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <key>``; given as ``auth=`` so that no ``.netrc`` overrides it.

    The header's value is a :class:`~spendguard._answer.MaskedHeader`: the HTTP stack's
    frames hold it, and their ``repr`` shows four characters of the key at most.
    """

    def __init__(self, key: Secret) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = MaskedHeader("Bearer " + self._key.reveal())
        return request

    def __repr__(self) -> str:
        return f"BearerAuth({self._key!r})"


LOW_LEVEL_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
"""What the HTTP stack raises: translated by :func:`translate_error`, never passed on."""


def translate_error(
    exc: Exception, provider: str, exchange: _Exchange | None, key: Secret | None
) -> tuple[ProviderError, BaseException]:
    """The most specific spendguard error for an HTTP-stack failure, and what to raise it
    from: the original, or a :class:`LowLevelError` standing in for it when its text
    held a fragment of ``key``. The one place ``requests`` errors are translated."""
    cause = scrub_error(exc, key)
    if exchange is not None and exchange.expired:
        return BalanceUnavailable(
            f"the request timed out (no complete answer within {exchange.timeout:g} s)",
            provider=provider,
        ), cause
    return _translated(exc, provider), cause


class LowLevelError(Exception):
    """Stands in for an HTTP-stack error whose text held part of the API key (a provider
    can echo it in a status line or a header): the original's type and message, scrubbed,
    and its frames, without their local variables."""


def scrub_error(exc: BaseException, key: Secret | None) -> BaseException:
    """``exc`` with the locals of its finished frames cleared, or a :class:`LowLevelError`
    in its place when the text of ``exc`` or of its causes holds a fragment of ``key``."""
    forget_locals(exc)
    if key is None:
        return exc
    text = "\n".join(f"{error}\n{error!r}" for error in _chain(exc))
    if key.scrub(text) == text:
        return exc
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    stand_in = LowLevelError(f"{name}: {key.scrub(str(exc), 2000)}")
    return stand_in.with_traceback(exc.__traceback__)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)


def forget_locals(exc: BaseException) -> None:
    """Clear the local variables of the finished frames in ``exc``'s tracebacks (its causes
    too). They hold what the provider sent, which may echo the key: a traceback rendered
    with locals must not show it. Function names and lines stay for debugging."""
    for error in _chain(exc):
        traceback.clear_frames(error.__traceback__)


def _translated(exc: Exception, provider: str) -> ProviderError:
    if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError):
        return BalanceUnavailable("the request timed out", provider=provider)
    if isinstance(exc, requests.ConnectionError):
        cause = _root_cause(exc)
        garbled = [
            e
            for e in _chain(exc)
            if isinstance(e, http.client.HTTPException) and not isinstance(e, OSError)
        ]
        if "Timeout" in cause:
            message = "the request timed out"
        elif garbled:
            message = f"the answer's head could not be read ({type(garbled[0]).__name__})"
        else:
            message = f"could not reach the provider ({cause})"
        return BalanceUnavailable(message, provider=provider)
    if isinstance(
        exc,
        requests.exceptions.ChunkedEncodingError
        | urllib3.exceptions.ProtocolError
        | http.client.HTTPException
        | OSError,
    ):
        # Reading a streamed body raises urllib3's own errors, not requests' wrappers.
        message = f"the connection broke during the answer ({_root_cause(exc)})"
        return BalanceUnavailable(message, provider=provider)
    if isinstance(exc, requests.RequestException):
        return ProviderError(f"the request failed ({type(exc).__name__})", provider=provider)
    return ProviderError(f"the answer could not be read ({type(exc).__name__})", provider=provider)


def request_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    key: Secret,
    provider: str,
    timeout: float,
    payload: Mapping[str, Any] | None = None,
) -> Any:
    """Send one authenticated request and return its decoded, scrubbed JSON body.

    Each attempt (connect, status line, headers, body) gets ``timeout`` seconds in all.

    Raises:
        AuthenticationError: 401 or 403.
        BalanceUnavailable: timeout, connection error, 429 or 5xx (after the session's retries),
            an answer that breaks off or takes longer than ``timeout`` to arrive.
        ProviderError: any other non-2xx status, a redirect, an oversized or non-JSON body.
    """
    started = time.monotonic()
    exchange = _Exchange(timeout)
    token = _EXCHANGE.set(exchange)
    try:
        try:
            response = session.request(
                method,
                url,
                auth=BearerAuth(key),
                headers={"Accept": "application/json"},
                json=payload,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
            # A session of the caller's own has no timer: its body gets a deadline here.
            deadline = None if exchange.armed else time.monotonic() + timeout
            try:
                raw = _read_capped(response, provider, deadline)
            finally:
                response.close()
        except LOW_LEVEL_ERRORS as exc:
            error, cause = translate_error(exc, provider, exchange, key)
            # This frame's locals are in every traceback of the error: not the original.
            del exc
            raise error from cause
        if exchange.expired:
            raise BalanceUnavailable(
                f"the request timed out (no complete answer within {timeout:g} s)",
                provider=provider,
                status=response.status_code,
            )
    finally:
        exchange.finish()
        _EXCHANGE.reset(token)
    status = response.status_code
    log.debug(
        "%s: %s %s -> HTTP %d in %.1f ms",
        provider,
        method,
        urlsplit(url).path,
        status,
        (time.monotonic() - started) * 1000,
    )
    # Whatever the provider echoes back, the key goes no further than this line.
    raw, body = read(raw, key)
    return outcome(
        status, raw, body, key=key, provider=provider, content_type=_content_type(response)
    )


def _read_capped(response: requests.Response, provider: str, deadline: float | None) -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` of it, read with ``read1`` (what has arrived),
    refused once ``deadline`` (monotonic seconds) has passed, if one is given."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    chunks_in: Iterator[bytes] = (
        iter(functools.partial(read1, 65536, decode_content=True), b"")
        if read1 is not None
        else response.iter_content(chunk_size=65536)
    )
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in chunks_in:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ProviderError(
                    f"answer larger than {MAX_BODY_BYTES} bytes refused",
                    provider=provider,
                    status=response.status_code,
                )
            chunks.append(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise BalanceUnavailable(
                    "the request timed out (the body took too long to arrive)",
                    provider=provider,
                    status=response.status_code,
                )
    except BaseException:
        # An unread body may hold anything the provider echoed: no frame keeps it.
        chunks.clear()
        chunk = b""
        raise
    return b"".join(chunks)


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's class name: ``ConnectionRefusedError``, ``RemoteDisconnected``."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None:
            nxt = next((a for a in current.args if isinstance(a, BaseException)), None)
        reason = getattr(current, "reason", None)
        if nxt is None and isinstance(reason, BaseException):
            nxt = reason
        if nxt is None:
            break
        current = nxt
    return type(current).__name__
