"""What a provider's answer means: the one place that turns a status and a body into JSON,
money or a typed error, and that keeps API keys out of everything it hands on.

Every provider and the guarded Session read answers through here, so a hostile or broken
answer (an HTML 502, a number ``Decimal`` cannot hold, a key echoed back) is handled once:

- :func:`decode` parses JSON with exact numbers in the library's own decimal context; a
  number no balance can be (``1e999999999``) becomes an :class:`UnusableNumber` that
  :func:`money` refuses, instead of an exception that escapes.
- :class:`Secret` holds a key; its ``repr`` is masked, and :meth:`Secret.scrub` removes the
  key and any fragment of it longer than four characters from text *before* it is cut to
  length (cutting first leaves the start of a key behind).
- :func:`outcome` maps a status to the error tree; :func:`money` reads a field as money.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
import weakref
from decimal import Decimal
from typing import Any

from ._errors import AuthenticationError, BalanceUnavailable, ProviderError
from ._money import UnusableNumber, parse_dollars, parse_json_float, parse_json_int, parse_number

NOT_JSON: Any = object()
"""What :func:`decode` returns for a body that is not JSON."""

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Statuses that mean "try again later": transient, never a verdict on the account."""

SHOWN = 4
"""At most this many leading characters of a key appear anywhere."""

_FRAGMENT = SHOWN + 1
_NOT_YET: Any = object()
_MESSAGE_LIMIT = 200
_SNIPPET_LIMIT = 120


def redact(key: str) -> str:
    """At most the first four characters of a key: ``"orth…"``."""
    return f"{key[:SHOWN]}…" if len(key) > 2 * SHOWN else "…"


class Secret:
    """An API key that shows itself only when asked: ``repr`` and ``str`` are masked.

    Local variables holding a ``Secret`` are safe in tracebacks rendered with locals
    (``traceback`` with ``capture_locals=True``, ``pytest --showlocals``, error trackers).
    """

    __slots__ = ("__weakref__", "_bytes_pattern", "_key", "_text_pattern")

    def __init__(self, value: str) -> None:
        self._key = value
        # Compiled on first use: a Secret made for one request may never scrub anything.
        self._text_pattern: Any = _NOT_YET
        self._bytes_pattern: Any = _NOT_YET
        if len(value) >= _FRAGMENT:
            with _LIVE_LOCK:
                _LIVE.add(self)

    def reveal(self) -> str:
        """The key itself, for the one place that sends it."""
        return self._key

    def scrub(self, text: str, limit: int | None = None) -> str:
        """``text`` without the key or any fragment of it beyond four characters, then cut
        to ``limit`` characters (with ``…``)."""
        if limit is not None and len(text) > limit:
            # Scrubbing a window one key longer than what is kept is as good as scrubbing
            # all of it: a fragment that reaches into the kept part lies inside the window.
            return self._scrub_text(text[: limit + len(self._key)])[:limit] + "…"
        return self._scrub_text(text)

    def scrub_bytes(self, raw: bytes) -> bytes:
        """``raw`` without the key's bytes or any fragment of them beyond four bytes."""
        if self._bytes_pattern is _NOT_YET:
            self._bytes_pattern = _fragments_pattern(self._key.encode("utf-8"))
        pattern = self._bytes_pattern
        if pattern is None or not raw:
            return raw
        key = self._key.encode("utf-8")
        scrubbed: bytes = _replace_fragments(raw, key.lower(), pattern, "…".encode(), _shown(key))
        return scrubbed

    def scrub_json(self, value: Any) -> Any:
        """A decoded JSON value with every string (and object key) scrubbed."""
        if isinstance(value, str) and not isinstance(value, UnusableNumber):
            return self._scrub_text(value)
        if isinstance(value, list):
            return [self.scrub_json(item) for item in value]
        if isinstance(value, dict):
            return {self._scrub_text(k): self.scrub_json(v) for k, v in value.items()}
        return value

    def _scrub_text(self, text: str) -> str:
        if self._text_pattern is _NOT_YET:
            self._text_pattern = _fragments_pattern(self._key)
        pattern = self._text_pattern
        if pattern is None or not text:
            return text
        key = self._key
        scrubbed: str = _replace_fragments(text, key.lower(), pattern, "…", _shown(key))
        return scrubbed

    def __repr__(self) -> str:
        return f"Secret({redact(self._key)!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("an API key is not pickled")


_LIVE: weakref.WeakSet[Secret] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def scrub_all(text: str) -> str:
    """``text`` scrubbed of every key a live :class:`Secret` holds."""
    with _LIVE_LOCK:
        keys = list(_LIVE)
    for key in keys:
        text = key.scrub(text)
    return text


class ScrubRecords(logging.Filter):
    """Scrubs every live key from the records of a logger the library does not own (the
    HTTP stack's: urllib3 quotes a broken status line or header, which may echo a key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _LIVE:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = scrub_all(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = scrub_all(text).rstrip("\n")
            record.exc_info = None
        return True


_FILTERED_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
)
_filter_lock = threading.Lock()
_filter = ScrubRecords()


def scrub_http_logs(names: tuple[str, ...] = _FILTERED_LOGGERS) -> None:
    """Attach :class:`ScrubRecords` to the HTTP stack's loggers (urllib3's by default),
    once per process."""
    with _filter_lock:
        for name in names:
            logger = logging.getLogger(name)
            logger.addFilter(_filter)  # once: a logger keeps a filter it has only once


class MaskedHeader(str):
    """A header value such as ``"Bearer <key>"`` whose ``repr`` masks all but four characters
    of the credential, so frames of the HTTP stack that hold it show no key."""

    __slots__ = ()

    def __repr__(self) -> str:
        scheme, space, credential = str.__str__(self).partition(" ")
        if not space:
            scheme, credential = "", scheme
        return repr(f"{scheme}{space}{redact(credential)}")


def _shown(key: Any) -> Any:
    """What :func:`redact` keeps of ``key`` (nothing of a short one)."""
    return key[:SHOWN] if len(key) > 2 * SHOWN else key[:0]


def _fragments_pattern(key: Any) -> Any:
    """A regex matching any run of five characters of ``key`` in any case (a provider may
    echo a key upper- or lower-cased), or None for short keys."""
    if len(key) < _FRAGMENT:
        return None
    key = key.lower()
    pieces = sorted({key[i : i + _FRAGMENT] for i in range(len(key) - _FRAGMENT + 1)})
    bar = b"|" if isinstance(key, bytes) else "|"
    return re.compile(bar.join(re.escape(piece) for piece in pieces), re.IGNORECASE)


def _replace_fragments(text: Any, folded: Any, pattern: Any, mark: Any, shown: Any) -> Any:
    """``text`` with each run of the key (``folded``: lower-cased) that ``pattern`` finds,
    in any case, replaced by ``mark`` (after ``shown`` when the run starts the key)."""
    parts = []
    pos = 0
    size = len(text)
    match = pattern.search(text)
    while match is not None:
        start, end = match.start(), match.end()
        while end < size and text[start : end + 1].lower() in folded:
            end += 1
        parts.append(text[pos:start])
        parts.append(shown + mark if folded.startswith(text[start:end].lower()) else mark)
        pos = end
        match = pattern.search(text, pos)
    if not parts:
        return text
    parts.append(text[pos:])
    return text[:0].join(parts)


def decode(raw: bytes) -> Any:
    """JSON with exact numbers (unusable ones marked), or :data:`NOT_JSON`."""
    if not raw.strip():
        return NOT_JSON
    try:
        return json.loads(
            raw,
            parse_float=parse_json_float,
            parse_int=parse_json_int,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError, ArithmeticError):
        return NOT_JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read(raw: bytes, key: Secret | None) -> tuple[bytes, Any]:
    """The body scrubbed of ``key`` and its JSON decoding (or :data:`NOT_JSON`).

    Decoding comes first, so that a number is never changed by scrubbing; every string
    of the decoded body is scrubbed (a key hidden in ``\\u`` escapes included).
    """
    body = decode(raw)
    if key is None:
        return raw, body
    return key.scrub_bytes(raw), key.scrub_json(body)


def outcome(
    status: int, raw: bytes, body: Any, *, key: Secret | None, provider: str, content_type: str
) -> Any:
    """The decoded body of a 2xx answer, or the error its status and body mean.

    ``raw`` and ``body`` are as :func:`read` returns them (scrubbed).

    Raises:
        AuthenticationError: 401 or 403.
        BalanceUnavailable: 429 or 5xx.
        ProviderError: A 2xx that is not JSON, a redirect, any other status.
    """
    if 200 <= status < 300:
        if body is NOT_JSON:
            raise ProviderError(
                f"answered {status} with a body that is not JSON "
                f"({content_type}): {snippet(raw, key)}",
                provider=provider,
                status=status,
            )
        return body
    message, code = describe_error(body, raw, key)
    text = f"HTTP {status}: {message}"
    if status in (401, 403):
        raise AuthenticationError(text, provider=provider, status=status, code=code)
    if status in RETRY_STATUSES or status >= 500:
        raise BalanceUnavailable(text, provider=provider, status=status, code=code)
    if 300 <= status < 400:
        raise ProviderError(
            f"HTTP {status}: redirect not followed (the API key is never sent to another URL)",
            provider=provider,
            status=status,
        )
    raise ProviderError(text, provider=provider, status=status, code=code)


def describe_error(body: Any, raw: bytes, key: Secret | None) -> tuple[str, str | None]:
    """A readable message (scrubbed, then cut) and the provider's error code, if any."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        code = body.get("code")
        if code is None and isinstance(body.get("error"), str) and body.get("message"):
            code = body["error"]
        if isinstance(message, str) and message:
            return text(message, key), text(code, key, 60) if isinstance(code, str) else None
    if not raw.strip():
        return "empty body", None
    return snippet(raw, key), None


def text(value: object, key: Secret | None, limit: int = _MESSAGE_LIMIT) -> str:
    """Provider text fit for a message: scrubbed of the key first, then cut to ``limit``."""
    words = str(value)
    if key is not None:
        return key.scrub(words, limit)
    return words if len(words) <= limit else words[:limit] + "…"


def snippet(raw: bytes, key: Secret | None) -> str:
    """The start of a body, on one line, scrubbed, cut and quoted."""
    extra = 0 if key is None else len(key.reveal())
    # Up to 4 bytes a character: the window holds the limit and a key's length of text.
    window = raw[: 4 * (_SNIPPET_LIMIT + extra)]
    words = " ".join(window.decode("utf-8", "replace").split())
    cut = text(words, key, _SNIPPET_LIMIT)
    return repr(cut if cut.endswith("…") or len(window) == len(raw) else cut + "…")


def money(value: object, *, field: str, provider: str, dollars: bool = False) -> Decimal:
    """A field of an answer as exact money.

    Args:
        value: The decoded field.
        field: Its name, for the message (``"balance"``, ``"balanceCents"``).
        provider: The provider's name.
        dollars: Whether a dollar string such as ``"$1,234.56"`` is allowed (Orthogonal).

    Raises:
        ProviderError: The value is missing, not a number, or one no balance can be
            (not finite, beyond 10**15, a non-zero magnitude below 10**-18).
    """
    try:
        if dollars and isinstance(value, str) and not isinstance(value, UnusableNumber):
            return parse_dollars(value)
        return parse_number(value)
    except (ValueError, ArithmeticError) as exc:
        raise ProviderError(f"malformed {field}: {exc}", provider=provider) from None


def kind(value: object) -> str:
    """What a JSON value is, for messages: ``"null"``, ``"a string"``, ``"a number"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and not isinstance(value, UnusableNumber):
        return "a string"
    return "a number"
