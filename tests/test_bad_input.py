"""Every kind of bad answer, over real HTTP: one documented outcome, and nothing runs unpaid."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

H3D = "GET /api/v2/check_balance"
BALANCE = "GET /v1/credits/balance"
CHECK = "POST /v1/credits/check"

TIMEOUT = 0.3
RETRIES = 1
ALL_ATTEMPTS = TIMEOUT * (RETRIES + 1) * 0.9
"""Least time spent when every attempt times out (a socket timeout may fire a bit early)."""
RUNS = "runs"
"""The outcome of a row whose answer is good: the guarded function runs."""

Fault = Callable[[ProviderSimulator], None]


@dataclass(frozen=True)
class Row:
    """One response class: which provider meets it, how, and what the guard then does."""

    provider: type[sg.Hyper3D] | type[sg.Orthogonal]
    fault: Fault
    outcome: type[sg.SpendGuardError] | str
    min_seconds: float = 0.0


def fail(route: str, **kwargs: object) -> Fault:
    """A fault applied with ``sim.fail``; transient ones last for every attempt."""
    return lambda sim: sim.fail(route, **kwargs)  # type: ignore[arg-type]


def h3d(body: object, status: int = 200, **kwargs: object) -> Fault:
    """A Hyper3D balance answer."""
    return fail(H3D, status=status, body=body, **kwargs)


def every_attempt(route: str, **kwargs: object) -> Fault:
    """A fault that outlasts the retries."""
    return fail(route, times=RETRIES + 1, **kwargs)


def slow(route: str) -> Fault:
    """An answer that comes long after the timeout."""
    return lambda sim: sim.slow(route, 30, times=RETRIES + 1)


def refused(sim: ProviderSimulator) -> None:
    """Nothing listens on the port any more."""
    sim.stop()


def overdrawn(sim: ProviderSimulator) -> None:
    """A real overdrawn Orthogonal account: "-$0.50" and a negative balanceCents."""
    sim.orthogonal_balance = "-0.50"


def retry_after_date(seconds: int) -> Fault:
    """429s whose Retry-After is an HTTP date ``seconds`` from now."""

    def apply(sim: ProviderSimulator) -> None:
        when = email.utils.formatdate(time.time() + seconds, usegmt=True)
        sim.fail(H3D, status=429, body=LIMITED, headers={"Retry-After": when}, times=RETRIES + 1)

    return apply


# The simulator sends a fault's headers only along with a body of its own.
LIMITED = {"error": "RATE_LIMITED", "message": "Too many requests"}
HTML = "<!DOCTYPE html><html><body><h1>Bad gateway</h1></body></html>"
H = sg.Hyper3D
O = sg.Orthogonal  # noqa: E741

# One row per response class of issue 3. Outcomes are what a guard with
# on_unavailable="raise" does for a guarded call costing 1 (10 credits / $5 on hand).
TABLE: dict[str, Row] = {
    # -- answers that are not JSON, or not the JSON expected --------------------------
    "200 html": Row(H, h3d(HTML), sg.ProviderError),
    "200 empty body": Row(H, h3d(b""), sg.ProviderError),
    "200 truncated json": Row(H, h3d(b'{"balance": 1'), sg.ProviderError),
    "200 json array": Row(H, h3d([{"balance": 10}]), sg.ProviderError),
    "200 json string": Row(H, h3d(b'"10"'), sg.ProviderError),
    "missing balance": Row(H, h3d({"error": None}), sg.ProviderError),
    "balance bool": Row(H, h3d({"balance": True}), sg.ProviderError),
    "balance null": Row(H, h3d({"balance": None}), sg.ProviderError),
    "balance object": Row(H, h3d({"balance": {"credits": 10}}), sg.ProviderError),
    "balance 1e300": Row(H, h3d(b'{"balance": 1e300}'), sg.ProviderError),
    "balance 5000 digits": Row(H, h3d(b'{"balance": ' + b"9" * 5000 + b"}"), sg.ProviderError),
    "balance 1e-900000": Row(H, h3d(b'{"balance": 1e-900000}'), sg.ProviderError),
    "balance exponent 1E+2": Row(H, h3d(b'{"balance": 1E+2}'), RUNS),
    "balance exponent 5E-1": Row(H, h3d(b'{"balance": 5E-1}'), sg.InsufficientCredits),
    'balance "NaN"': Row(H, h3d({"balance": "NaN"}), sg.ProviderError),
    "balance NaN literal": Row(H, h3d(b'{"balance": NaN}'), sg.ProviderError),
    'balance "10" (string)': Row(H, h3d({"balance": "10"}), sg.ProviderError),
    "balance negative": Row(H, h3d({"balance": -2}), sg.InsufficientCredits),
    'orthogonal balance "1E+2"': Row(
        O, fail(BALANCE, status=200, body={"balance": "1E+2"}), sg.ProviderError
    ),
    'orthogonal balance "$5.00" ok': Row(
        O, fail(BALANCE, status=200, body={"balance": "$5.00"}), RUNS
    ),
    # -- provider-level failures inside a 2xx -----------------------------------------
    'hyper3d error "OK"': Row(H, h3d({"error": "OK", "balance": 10}), RUNS),
    "hyper3d error string": Row(
        H,
        h3d({"error": "NO_SUBSCRIPTION", "message": "expired", "balance": 10}, 201),
        sg.ProviderError,
    ),
    "orthogonal success false 200": Row(
        O,
        fail(CHECK, status=200, body={"success": False, "error": "boom", "code": "BAD_REQUEST"}),
        sg.ProviderError,
    ),
    "orthogonal success false RATE_LIMITED": Row(
        O,
        fail(CHECK, status=200, body={"success": False, "error": "slow", "code": "RATE_LIMITED"}),
        sg.BalanceUnavailable,
    ),
    "orthogonal success false UNAUTHORIZED": Row(
        O,
        fail(CHECK, status=200, body={"success": False, "error": "key", "code": "UNAUTHORIZED"}),
        sg.AuthenticationError,
    ),
    "sufficient not a bool": Row(
        O,
        fail(CHECK, status=200, body={"sufficient": "true", "balanceCents": 500000}),
        sg.ProviderError,
    ),
    "sufficient null": Row(
        O,
        fail(CHECK, status=200, body={"sufficient": None, "balanceCents": 500000}),
        sg.ProviderError,
    ),
    "balanceCents 1e300": Row(
        O,
        fail(CHECK, status=200, body=b'{"sufficient": true, "balanceCents": 1e300}'),
        sg.ProviderError,
    ),
    "negative balanceCents (overdrawn)": Row(O, overdrawn, sg.InsufficientCredits),
    "negative balanceCents, sufficient true": Row(
        O,
        fail(CHECK, status=200, body={"sufficient": True, "balanceCents": -50000}),
        sg.InsufficientCredits,
    ),
    # -- statuses ---------------------------------------------------------------------
    "401": Row(H, fail(H3D, status=401), sg.AuthenticationError),
    "403": Row(O, fail(CHECK, status=403), sg.AuthenticationError),
    "402": Row(O, fail(CHECK, status=402), sg.ProviderError),
    "404": Row(H, fail(H3D, status=404), sg.ProviderError),
    "429 no Retry-After": Row(H, every_attempt(H3D, status=429), sg.BalanceUnavailable),
    # No wait between attempts is longer than the timeout, whatever Retry-After says.
    "429 Retry-After seconds": Row(
        H,
        every_attempt(H3D, status=429, body=LIMITED, headers={"Retry-After": "1"}),
        sg.BalanceUnavailable,
        TIMEOUT * RETRIES * 0.9,
    ),
    "429 Retry-After date": Row(
        H, retry_after_date(2), sg.BalanceUnavailable, TIMEOUT * RETRIES * 0.9
    ),
    "429 then 200": Row(H, fail(H3D, status=429, body=LIMITED, headers={"Retry-After": "0"}), RUNS),
    "500": Row(H, every_attempt(H3D, status=500), sg.BalanceUnavailable),
    "502 html": Row(O, every_attempt(CHECK, status=502, body=HTML), sg.BalanceUnavailable),
    "503": Row(H, every_attempt(H3D, status=503), sg.BalanceUnavailable),
    "503 once, then 200": Row(H, fail(H3D, status=503), RUNS),
    "302 redirect": Row(
        H,
        fail(H3D, status=302, body=b"", headers={"Location": "https://example.com/"}),
        sg.ProviderError,
    ),
    "200 over 1 MiB": Row(
        H, h3d(b'{"balance": 10, "pad": "' + b"x" * 1_100_000 + b'"}'), sg.ProviderError
    ),
    # -- transport --------------------------------------------------------------------
    "slow past the timeout": Row(H, slow(H3D), sg.BalanceUnavailable, ALL_ATTEMPTS),
    "orthogonal slow past the timeout": Row(O, slow(CHECK), sg.BalanceUnavailable, ALL_ATTEMPTS),
    "connection reset (drop)": Row(H, every_attempt(H3D, drop=True), sg.BalanceUnavailable),
    "connection refused": Row(H, refused, sg.BalanceUnavailable),
}

# Rows that wait out a Retry-After are checked once, under "raise".
ERRORS = {
    name: row
    for name, row in TABLE.items()
    if isinstance(row.outcome, type) and row.min_seconds <= ALL_ATTEMPTS
}


def _decide(sim: ProviderSimulator, row: Row, policy: sg.OnUnavailable) -> tuple[object, list[int]]:
    """Apply the row's fault, call a guarded function; return what it raised (or RUNS) and
    whether it ran."""
    ran: list[int] = []
    with row.provider(sim.api_key, base_url=sim.url, timeout=TIMEOUT, retries=RETRIES) as provider:
        guard = sg.SpendGuard(provider, on_unavailable=policy)

        @guard(cost=1)
        def generate() -> None:
            ran.append(1)

        row.fault(sim)
        try:
            generate()
        except sg.SpendGuardError as exc:
            assert guard.held == 0
            return exc, ran
        assert guard.held == 0
        return RUNS, ran


@pytest.mark.parametrize("name", list(TABLE))
def test_response_class_has_one_outcome(sim: ProviderSimulator, name: str) -> None:
    """Under on_unavailable="raise" each response class has one outcome; errors never run."""
    row = TABLE[name]
    started = time.monotonic()
    outcome, ran = _decide(sim, row, "raise")
    elapsed = time.monotonic() - started
    if row.outcome == RUNS:
        assert outcome == RUNS, outcome
        assert ran == [1]
    else:
        assert type(outcome) is row.outcome, repr(outcome)
        assert ran == []
        assert len(str(outcome)) < 400
    assert elapsed >= row.min_seconds


@pytest.mark.parametrize("name", list(ERRORS))
def test_allow_lets_only_unavailability_through(sim: ProviderSimulator, name: str) -> None:
    """Under "allow" only BalanceUnavailable lets the call run; a bad key or answer never."""
    row = ERRORS[name]
    outcome, ran = _decide(sim, row, "allow")
    if row.outcome is sg.BalanceUnavailable:
        assert (outcome, ran) == (RUNS, [1])
    else:
        assert type(outcome) is row.outcome
        assert ran == []


def test_deadline_against_a_server_that_never_answers(sim: ProviderSimulator) -> None:
    """A decision ends within timeout x attempts + backoff when the server stays silent."""
    retries = 2
    sim.slow(H3D, 60, times=10)
    # build_session: backoff_factor 0.2, jitter up to 0.1; urllib3 waits nothing before
    # the first retry and factor * 2 ** (n - 1) before the n-th after that.
    backoff = sum(0.2 * 2 ** (n - 1) + 0.1 for n in range(2, retries + 1))
    bound = TIMEOUT * (retries + 1) + backoff
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=TIMEOUT, retries=retries) as provider:
        guard = sg.SpendGuard(provider)
        started = time.monotonic()
        with pytest.raises(sg.BalanceUnavailable, match="timed out"):
            guard.check(1)
        elapsed = time.monotonic() - started
    assert sim.count(H3D) == retries + 1
    assert TIMEOUT * (retries + 1) * 0.9 <= elapsed <= bound + 0.5


@pytest.fixture
def dribbler() -> Iterator[Callable[[bytes, float, int | None], str]]:
    """A raw HTTP server that sends its headers at once, then the body a byte at a time.

    Call it with the body, the pause between bytes and, optionally, after how many bytes
    to cut the connection; it returns the base URL.
    """
    stop = threading.Event()
    servers: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def handle(conn: socket.socket, body: bytes, pause: float, cut: int | None) -> None:
        with conn:
            try:
                conn.recv(65536)
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode())
                for index in range(len(body) if cut is None else cut):
                    if stop.wait(pause):
                        return
                    conn.sendall(body[index : index + 1])
            except OSError:
                return

    def serve(server: socket.socket, body: bytes, pause: float, cut: int | None) -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=handle, args=(conn, body, pause, cut), daemon=True)
            threads.append(thread)
            thread.start()

    def start(body: bytes, pause: float, cut: int | None = None) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.05)  # so that serve() notices stop
        servers.append(server)
        thread = threading.Thread(target=serve, args=(server, body, pause, cut), daemon=True)
        threads.append(thread)
        thread.start()
        return f"http://127.0.0.1:{server.getsockname()[1]}"

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for server in servers:
        server.close()


def test_deadline_against_a_dribbled_body(
    dribbler: Callable[[bytes, float, int | None], str],
) -> None:
    """A body sent a byte per read timeout cannot stretch a decision past its deadline."""
    body = b'{"balance": 10}' + b" " * 85  # 100 bytes, 5 s at 0.05 s a byte
    url = dribbler(body, 0.05, None)
    with sg.Hyper3D("k" * 20, base_url=url, timeout=TIMEOUT, retries=RETRIES) as provider:
        guard = sg.SpendGuard(provider)
        started = time.monotonic()
        with pytest.raises(sg.BalanceUnavailable, match="timed out"):
            guard.check(1)
        elapsed = time.monotonic() - started
    assert elapsed <= TIMEOUT * 2 + 0.5


def test_connection_cut_mid_body_is_unavailable(
    dribbler: Callable[[bytes, float, int | None], str],
) -> None:
    """A connection that breaks halfway through the body is BalanceUnavailable."""
    url = dribbler(b'{"balance": 10, "padding": "xxxxxxxxxxxxxxxx"}', 0.0, 10)
    ran: list[int] = []
    with sg.Hyper3D("k" * 20, base_url=url, timeout=TIMEOUT, retries=RETRIES) as provider:
        guard = sg.SpendGuard(provider)

        @guard(cost=1)
        def generate() -> None:
            ran.append(1)

        with pytest.raises(sg.BalanceUnavailable, match="connection broke"):
            generate()
    assert ran == []
