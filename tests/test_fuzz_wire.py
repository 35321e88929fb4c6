"""Fuzzing over the wire: whatever a provider sends, byte for byte, the library raises only
documented errors, within the stated time, and shows no more than four characters of the key.

Answers are drawn by hypothesis (status, headers, body, framing, pace) and sent by a raw
socket server, so they may lie in Content-Length, break chunked framing, claim a
compression they do not use or trickle their head; both providers and the guarded Session
meet them.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from types import FrameType

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spendguard as sg
from spendguard.testing import ProviderSimulator
from tests.hostile import HostileServer, Step

TIMEOUT = 0.25
RETRIES = 1
BOUND = TIMEOUT * (2 * RETRIES + 1)
"""The README's bound for one lookup: each attempt and each wait within the timeout."""
SLACK = 0.6
"""Scheduling noise on a shared machine, and a lookup's own work."""

KEY = "sk_live_" + "Zq7vX2mN9pL4tR8wY3kJ6hB1cF5gD0sAWu2E"

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- what a hostile provider sends ---------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(
        [
            "1e999999999",
            "1e99999999999999999999",
            "-1e999999999",
            "1E+2",
            "12.5",
            "-0",
            "9" * 5000,
            "0." + "0" * 3000 + "1",
            "NaN",
            "Infinity",
            "500000",
        ]
    ),
)
TEXT_VALUE = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["$5.00", "$-0.50", "dynamic", "OK", "", "RATE_LIMITED", "UNAUTHORIZED"]),
    st.sampled_from([KEY, KEY[:12], KEY[6:30], "x" * 190 + KEY]),
).map(json.dumps)
VALUE = st.one_of(
    NUMBER_TEXT, TEXT_VALUE, st.sampled_from(["true", "false", "null", "[]", "{}", '{"price": 1}'])
)
FIELDS = st.sampled_from(
    ["balance", "balanceCents", "sufficient", "error", "message", "code", "success", "price"]
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON object of the fields providers read, with values of every shape."""
    fields = draw(st.dictionaries(FIELDS, VALUE, max_size=5))
    if draw(st.booleans()):
        fields["endpoint"] = '{"price": ' + draw(VALUE) + "}"
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


BODIES = st.one_of(
    json_bodies(),
    json_bodies(),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"<html><body>Bad gateway for " + KEY.encode() + b"</body></html>",
            b"[" * 3000,
            b'{"balance": 10}',
            b'{"sufficient": true, "balanceCents": 500000}',
            gzip.compress(b"0" * 3_000_000),
        ]
    ),
)

STATUS = st.one_of(
    st.sampled_from([200, 201, 204, 302, 400, 401, 402, 403, 404, 429, 500, 502, 503]),
    st.integers(min_value=100, max_value=999),
    st.sampled_from(["abc", "", "2OO", "-1", "99999999999999999999"]),
)

HEADER = st.one_of(
    st.tuples(st.just("Retry-After"), st.sampled_from(["1.5", "-1", "abc", "9" * 3000, "0"])),
    st.tuples(st.just("Content-Encoding"), st.sampled_from(["gzip", "deflate", "br", "zstd", "x"])),
    st.tuples(st.just("Content-Type"), st.sampled_from(["application/json", "text/html", "x/y"])),
    st.tuples(st.just("Location"), st.just("https://elsewhere.example/" + KEY)),
    st.tuples(st.just("X-Echo"), st.just(KEY)),
)

FRAMING = st.sampled_from(
    ["length"] * 6
    + ["short", "long", "none", "bad-length", "chunked", "chunked-bad", "gzip", "double-length"]
)
PACE = st.sampled_from(["now"] * 12 + ["trickled-head", "stall"])


@dataclass(frozen=True)
class Answer:
    """One hostile answer, and how to send it."""

    status: int | str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str
    pace: str

    def steps(self) -> list[Step]:
        """The bytes to send, with pauses."""
        body = self.body
        headers = list(self.headers)
        if self.framing == "gzip":
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        if self.framing in ("length", "gzip"):
            headers.append(("Content-Length", str(len(body))))
        elif self.framing == "short":
            headers.append(("Content-Length", str(max(len(body) - 3, 0))))
        elif self.framing == "long":
            headers.append(("Content-Length", str(len(body) + 50)))
        elif self.framing == "bad-length":
            headers.append(("Content-Length", "abc"))
        elif self.framing == "double-length":
            headers += [("Content-Length", str(len(body))), ("Content-Length", "1")]
        elif self.framing in ("chunked", "chunked-bad"):
            headers.append(("Transfer-Encoding", "chunked"))
            size = f"{len(body):x}" if self.framing == "chunked" else "zz"
            body = f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        status = self.status if isinstance(self.status, str) else f"{self.status} Whatever"
        head = f"HTTP/1.1 {status}\r\n".encode("latin-1")
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        head += b"Connection: close\r\n\r\n"
        if self.pace == "stall":
            return [(b"", TIMEOUT * 4)]
        if self.pace == "trickled-head":
            return [(head[i : i + 1], 0.04) for i in range(len(head))] + [(body, 0.0)]
        return [(head + body, 0.0)]


ANSWERS = st.builds(
    Answer,
    status=STATUS,
    headers=st.lists(HEADER, max_size=3).map(tuple),
    body=BODIES,
    framing=FRAMING,
    pace=PACE,
)

# -- what is asserted ------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def logs() -> Iterator[list[str]]:
    """Every log line of every logger while the block runs."""
    handler = _Records()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def fragments(text: str) -> list[str]:
    """Every run of five characters of the key found in ``text``."""
    return [KEY[i : i + 5] for i in range(len(KEY) - 4) if KEY[i : i + 5] in text]


def shown(exc: BaseException) -> str:
    """All an exception shows: message, repr and its traceback with locals (this file's
    frames, which hold the key on purpose, left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    rendered = traceback.TracebackException(type(exc), exc, tb, capture_locals=True)
    return "\n".join([str(exc), repr(exc), *rendered.format()])


def assert_scrubbed(exc: BaseException | None, lines: list[str]) -> None:
    """No exception text and no log line holds five characters of the key."""
    text = "\n".join(lines) + ("" if exc is None else shown(exc))
    assert fragments(text) == [], text[-3000:]


# -- the suite -----------------------------------------------------------------------------------


def _lookup(provider: sg.Hyper3D | sg.Orthogonal, server: HostileServer, reply: Answer) -> None:
    server.script = lambda _request: reply.steps()
    guard = sg.SpendGuard(provider)
    guard.invalidate()
    caught: BaseException | None = None
    with logs() as lines:
        started = time.monotonic()
        try:
            guard.check("0.01")
        except (sg.ProviderError, sg.InsufficientCredits) as exc:
            caught = exc
        elapsed = time.monotonic() - started
    # Orthogonal's first check may also look up the dollar balance: two lookups.
    lookups = 2 if isinstance(provider, sg.Orthogonal) else 1
    assert elapsed <= BOUND * lookups + SLACK, (elapsed, reply)
    assert guard.held == 0
    assert_scrubbed(caught, lines)


@FUZZ
@given(reply=ANSWERS)
def test_hyper3d_meets_any_answer(reply: Answer) -> None:
    """Hyper3D: a Check or a documented error, in time, and no key."""
    with (
        HostileServer() as server,
        sg.Hyper3D(KEY, base_url=server.url, timeout=TIMEOUT, retries=RETRIES) as provider,
    ):
        _lookup(provider, server, reply)


@FUZZ
@given(reply=ANSWERS)
def test_orthogonal_meets_any_answer(reply: Answer) -> None:
    """Orthogonal: a Check or a documented error, in time, and no key."""
    with (
        HostileServer() as server,
        sg.Orthogonal(KEY, base_url=server.url, timeout=TIMEOUT, retries=RETRIES) as provider,
    ):
        _lookup(provider, server, reply)


@FUZZ
@given(reply=ANSWERS)
def test_orthogonal_price_meets_any_answer(reply: Answer) -> None:
    """Orthogonal's price lookup: a price, None or a ProviderError, in time, and no key."""
    with (
        HostileServer(lambda _request: reply.steps()) as server,
        sg.Orthogonal(KEY, base_url=server.url, timeout=TIMEOUT, retries=RETRIES) as provider,
    ):
        caught: BaseException | None = None
        with logs() as lines:
            started = time.monotonic()
            try:
                price = provider.price("sim-search", "/search")
            except sg.ProviderError as exc:
                caught = exc
            else:
                assert price is None or (price.is_finite() and price >= 0)
            elapsed = time.monotonic() - started
    assert elapsed <= BOUND + SLACK
    assert_scrubbed(caught, lines)


SESSION_ANSWERS = st.builds(
    Answer,
    status=STATUS,
    headers=st.lists(HEADER, max_size=3).map(tuple),
    body=BODIES,
    framing=FRAMING,
    pace=st.just("now"),
)


def _paid_request(sim: ProviderSimulator, guard: sg.SpendGuard, url: str, reply: Answer) -> None:
    """Send the guard's billable request to the hostile server and check what comes back."""
    caught: BaseException | None = None
    spent_before = guard.spent
    with logs() as lines, guard.session() as http:
        try:
            if isinstance(guard.provider, sg.Orthogonal):
                response = http.post(
                    url + "/v1/run",
                    json={"api": "sim-search", "path": "/search"},
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=TIMEOUT,
                )
            else:
                response = http.post(
                    url + "/api/v2/rodin",
                    data={"prompt": "a chair"},
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=TIMEOUT,
                )
        except (requests.RequestException, sg.InsufficientCredits) as exc:
            caught = exc
        else:
            assert response.status_code != 402
            if 200 <= response.status_code < 300 and isinstance(guard.provider, sg.Hyper3D):
                assert guard.spent == spent_before + Decimal("0.5")
    assert guard.held == 0
    assert guard.spent >= spent_before
    if isinstance(caught, sg.InsufficientCredits):
        assert caught.available is not None
    # The caller's own frames hold the key it sent, and requests reads a body after the
    # adapter has returned: only frames from the adapter down are the library's.
    if caught is not None:
        tb = caught.__traceback__
        while tb is not None and not _adapter_frame(tb.tb_frame):
            tb = tb.tb_next
        caught.__traceback__ = tb
    assert_scrubbed(caught, lines)


def _adapter_frame(frame: FrameType) -> bool:
    code = frame.f_code
    return code.co_name == "send" and code.co_filename.endswith("_session.py")


@FUZZ
@given(reply=SESSION_ANSWERS)
def test_guarded_session_meets_any_answer(reply: Answer) -> None:
    """A guarded Rodin or /v1/run request: a response or a documented error, holds ended."""
    with (
        ProviderSimulator(api_key=KEY) as sim,
        HostileServer(lambda _request: reply.steps()) as server,
        sg.Hyper3D(KEY, base_url=sim.url, timeout=2.0) as rodin,
        sg.Orthogonal(KEY, base_url=sim.url, timeout=2.0) as orthogonal,
    ):
        for provider in (rodin, orthogonal):
            _paid_request(sim, sg.SpendGuard(provider), server.url, reply)
    assert Decimal(0) <= sim.hyper3d_balance
