"""HTTP plumbing shared by the providers: sessions with retries, one place that translates
``requests`` errors, capped and validated JSON bodies, key redaction and URL safety."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ._errors import AuthenticationError, BalanceUnavailable, ConfigurationError, ProviderError

log = logging.getLogger("spendguard")

MAX_BODY_BYTES = 1 << 20
"""Provider answers larger than this are refused: a balance is a few dozen bytes."""

DEFAULT_RETRIES = 2
"""Retries after the first attempt for lookups (connection errors, 429, 5xx)."""

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_LOOPBACK_NAMES = frozenset({"localhost"})


class _CappedRetry(Retry):
    """``Retry`` that honours ``Retry-After`` but never sleeps longer than a cap."""

    RETRY_AFTER_CAP = 10.0

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.RETRY_AFTER_CAP)


def build_session(retries: int = DEFAULT_RETRIES) -> requests.Session:
    """A session that retries read-only lookups with exponential backoff and jitter.

    Connection errors, 429 and 5xx are retried up to ``retries`` times, honouring
    ``Retry-After`` (seconds or an HTTP date, capped). Redirects are never followed.
    """
    retry = _CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        redirect=0,
        status_forcelist=_RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=0.2,
        backoff_max=5.0,
        backoff_jitter=0.1,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def redact(key: str) -> str:
    """At most the first four characters of a key: ``"orth…"``."""
    return f"{key[:4]}…" if len(key) > 8 else "…"


def resolve_key(api_key: str | None, env_vars: tuple[str, ...], provider: str) -> str:
    """The explicit key, else the first environment variable set, else a ConfigurationError."""
    key = api_key
    if key is None:
        key = next((os.environ[v] for v in env_vars if os.environ.get(v, "").strip()), None)
    if key is None:
        names = " or ".join(env_vars)
        raise ConfigurationError(f"{provider}: no API key; pass api_key= or set {names}")
    key = key.strip()
    if not key or any(c.isspace() or ord(c) < 32 for c in key):
        raise ConfigurationError(f"{provider}: the API key is empty or contains whitespace")
    return key


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
    """``Authorization: Bearer <key>``; given as ``auth=`` so that no ``.netrc`` overrides it."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return f"BearerAuth({redact(self._key)!r})"


@contextmanager
def translate_errors(provider: str) -> Iterator[None]:
    """Turn ``requests`` failures into the most specific spendguard error."""
    try:
        yield
    except requests.Timeout as exc:
        raise BalanceUnavailable("the request timed out", provider=provider) from exc
    except requests.ConnectionError as exc:
        cause = _root_cause(exc)
        message = (
            "the request timed out"
            if "Timeout" in cause
            else f"could not reach the provider ({cause})"
        )
        raise BalanceUnavailable(message, provider=provider) from exc
    except requests.RequestException as exc:
        raise ProviderError(
            f"the request failed ({type(exc).__name__})", provider=provider
        ) from exc
    # Reading a streamed body raises urllib3's own errors, not requests' wrappers.
    except urllib3.exceptions.TimeoutError as exc:
        raise BalanceUnavailable("the request timed out", provider=provider) from exc
    except urllib3.exceptions.ProtocolError as exc:
        message = f"the connection broke during the answer ({_root_cause(exc)})"
        raise BalanceUnavailable(message, provider=provider) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise ProviderError(
            f"the answer could not be read ({type(exc).__name__})", provider=provider
        ) from exc


def request_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    key: str,
    provider: str,
    timeout: float,
    payload: Mapping[str, Any] | None = None,
) -> Any:
    """Send one authenticated request and return its decoded JSON body.

    Raises:
        AuthenticationError: 401 or 403.
        BalanceUnavailable: timeout, connection error, 429 or 5xx (after the session's retries),
            a body that breaks off or takes longer than ``timeout`` to arrive.
        ProviderError: any other non-2xx status, a redirect, an oversized or non-JSON body.
    """
    started = time.monotonic()
    with translate_errors(provider):
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
        try:
            raw = _read_capped(response, provider, timeout)
        finally:
            response.close()
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
    raw = _scrub_bytes(raw, key)
    body = _decode(raw, key)
    if 200 <= status < 300:
        if body is _NOT_JSON:
            raise ProviderError(
                f"answered {status} with a body that is not JSON "
                f"({_content_type(response)}): {_snippet(raw, key)}",
                provider=provider,
                status=status,
            )
        return body
    message, code = _describe_error(body, raw, key)
    text = f"HTTP {status}: {message}"
    if status in (401, 403):
        raise AuthenticationError(text, provider=provider, status=status, code=code)
    if status in _RETRY_STATUSES or status >= 500:
        raise BalanceUnavailable(text, provider=provider, status=status, code=code)
    if 300 <= status < 400:
        raise ProviderError(
            f"HTTP {status}: redirect not followed (the API key is never sent to another URL)",
            provider=provider,
            status=status,
        )
    raise ProviderError(text, provider=provider, status=status, code=code)


_NOT_JSON: Any = object()
_SCRUB_MIN = 8


def _read_capped(response: requests.Response, provider: str, timeout: float) -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` of it, arriving within ``timeout`` seconds.

    The socket timeout bounds each read, not the whole body: a server sending one byte
    per read timeout would hold the caller for as long as it likes. So the body is read
    with ``read1`` (returns what has arrived) against a deadline.
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    chunks_in: Iterator[bytes] = (
        iter(functools.partial(read1, 65536, decode_content=True), b"")
        if read1 is not None
        else response.iter_content(chunk_size=65536)
    )
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    for chunk in chunks_in:
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProviderError(
                f"answer larger than {MAX_BODY_BYTES} bytes refused",
                provider=provider,
                status=response.status_code,
            )
        chunks.append(chunk)
        if time.monotonic() > deadline and not getattr(raw, "closed", True):
            raise BalanceUnavailable(
                f"the answer took longer than {timeout:g} s to arrive",
                provider=provider,
                status=response.status_code,
            )
    return b"".join(chunks)


def _decode(raw: bytes, key: str = "") -> Any:
    """JSON with exact numbers, or ``_NOT_JSON``; strings that hid ``key`` in escapes are
    scrubbed too (``raw`` itself is expected to be scrubbed already)."""
    if not raw.strip():
        return _NOT_JSON
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
        if len(key) >= _SCRUB_MIN and b"\\" in raw:
            body = _scrub_json(body, key)
        return body
    except (ValueError, RecursionError):
        return _NOT_JSON


def _scrub_bytes(raw: bytes, key: str) -> bytes:
    # A "key" of a few characters could be innocent text in a body, such as a balance.
    return raw.replace(key.encode(), redact(key).encode()) if len(key) >= _SCRUB_MIN else raw


def _scrub_json(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return _scrub(value, key)
    if isinstance(value, list):
        return [_scrub_json(item, key) for item in value]
    if isinstance(value, dict):
        return {_scrub(k, key): _scrub_json(v, key) for k, v in value.items()}
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _describe_error(body: Any, raw: bytes, key: str) -> tuple[str, str | None]:
    """A readable message and the provider's error code from an error body, if any."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        code = body.get("code")
        if code is None and isinstance(body.get("error"), str) and body.get("message"):
            code = body["error"]
        if isinstance(message, str) and message:
            return _scrub(message[:200], key), code if isinstance(code, str) else None
    if not raw.strip():
        return "empty body", None
    return _snippet(raw, key), None


def _snippet(raw: bytes, key: str) -> str:
    text = " ".join(raw[:120].decode("utf-8", "replace").split())
    return repr(_scrub(text, key) + ("…" if len(raw) > 120 else ""))


def _scrub(text: str, key: str) -> str:
    return text.replace(key, redact(key)) if key else text


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's class name: ``ConnectionRefusedError``, ``RemoteDisconnected``."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        reason = getattr(current, "reason", None)
        if nxt is None and isinstance(reason, BaseException):
            nxt = reason
        if nxt is None:
            break
        current = nxt
    return type(current).__name__
