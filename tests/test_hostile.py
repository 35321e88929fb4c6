"""Hostile providers and networks: every answer bounded, typed and scrubbed."""

from __future__ import annotations

import decimal
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

import spendguard as sg
from spendguard.pricing import UnknownPrice
from spendguard.testing import ProviderSimulator
from tests.hostile import HostileServer, answer, trickled

H3D = "GET /api/v2/check_balance"
BALANCE = "GET /v1/credits/balance"
CHECK = "POST /v1/credits/check"
DETAILS = "POST /v1/details"
RODIN = "POST /api/v2/rodin"
RUN = "POST /v1/run"

KEY = "sk_live_" + "Zq7vX2mN9pL4tR8wY3kJ6hB1cF5gD0sAWu2E"  # 44 characters
"""A long key: the tests look for any five of its characters in a row."""


def fragments(text: str, key: str = KEY) -> list[str]:
    """Every run of five or more characters of ``key`` found in ``text``."""
    return [key[i : i + 5] for i in range(len(key) - 4) if key[i : i + 5] in text]


def rendered(exc: BaseException) -> str:
    """An exception as a traceback with every frame's locals, causes included; the test's
    own frames (which hold the key on purpose) are left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.TracebackException(type(exc), exc, tb, capture_locals=True).format())


@pytest.fixture
def keyed_sim() -> Iterator[ProviderSimulator]:
    """A simulator that accepts only the long key."""
    with ProviderSimulator(api_key=KEY, orthogonal_usd="5.00", hyper3d_credits="10") as sim:
        yield sim


# -- 1. Retry-After never decides the outcome -----------------------------------------------

RETRY_AFTERS = [
    "1.5",
    "-1",
    "abc",
    "",
    "0x10",
    "1e3",
    "\xb2",
    "9" * 5000,
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 99999 00:00:00 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("value", RETRY_AFTERS)
def test_retry_after_of_any_shape_stays_transient(
    sim: ProviderSimulator, status: int, value: str
) -> None:
    """A 429/503 is retried with a capped wait whatever its Retry-After, then unavailable."""
    sim.fail(H3D, status=status, body={"error": "busy"}, headers={"Retry-After": value}, times=2)
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=0.3, retries=1) as provider:
        started = time.monotonic()
        with pytest.raises(sg.BalanceUnavailable):
            provider.fetch_balance()
        elapsed = time.monotonic() - started
    assert sim.count(H3D) == 2
    assert elapsed <= 0.3 * 3 + 0.5


def test_retry_after_lets_the_failure_policy_apply(sim: ProviderSimulator) -> None:
    """Under on_unavailable="allow" a 429 with Retry-After "abc" lets the call run."""
    sim.fail(H3D, status=429, body={"error": "busy"}, headers={"Retry-After": "abc"}, times=2)
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=0.3, retries=1) as provider:
        guard = sg.SpendGuard(provider, on_unavailable="allow")
        assert guard.check(1).sufficient


def test_retry_after_below_the_timeout_is_honoured(sim: ProviderSimulator) -> None:
    """A fractional Retry-After shorter than the timeout is waited out, then retried."""
    sim.fail(H3D, status=429, body={"error": "busy"}, headers={"Retry-After": "0.4"})
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=1.0, retries=1) as provider:
        started = time.monotonic()
        assert provider.fetch_balance() == 10
        assert time.monotonic() - started >= 0.35


# -- 2. A deadline over the whole exchange ----------------------------------------------------


def test_trickled_head_is_cut_at_the_stated_bound() -> None:
    """A head sent a byte every 0.5 s, timeout=1, retries=2: over within 5 s, not 25 s."""
    timeout, retries = 1.0, 2
    head = answer(200, b'{"balance": 10}')
    with HostileServer(lambda _request: trickled(head, 0.5)) as server:
        with sg.Hyper3D(KEY, base_url=server.url, timeout=timeout, retries=retries) as provider:
            started = time.monotonic()
            with pytest.raises(sg.BalanceUnavailable, match="timed out"):
                provider.fetch_balance()
            elapsed = time.monotonic() - started
        assert len(server.requests) == retries + 1
    assert elapsed <= timeout * (2 * retries + 1) + 0.3


def test_trickled_head_bounds_every_waiting_thread() -> None:
    """Threads that wait on one account's lookup are released within the same bound."""
    timeout = 0.4
    head = answer(200, b'{"balance": 10}')
    with (
        HostileServer(lambda _request: trickled(head, 0.1)) as server,
        sg.Hyper3D(KEY, base_url=server.url, timeout=timeout, retries=0) as provider,
    ):
        guard = sg.SpendGuard(provider)
        outcomes: list[type[BaseException]] = []

        def decide() -> None:
            try:
                guard.check(1)
            except sg.SpendGuardError as exc:
                outcomes.append(type(exc))

        started = time.monotonic()
        threads = [threading.Thread(target=decide) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    assert outcomes == [sg.BalanceUnavailable] * 4
    assert elapsed <= timeout + 0.5


def test_a_good_slow_answer_within_the_timeout_is_read() -> None:
    """An answer that trickles but completes within the timeout is used."""
    whole = answer(200, b'{"balance": 7}')
    with (
        HostileServer(lambda _request: trickled(whole, 0.002)) as server,
        sg.Hyper3D(KEY, base_url=server.url, timeout=2.0, retries=0) as provider,
    ):
        assert provider.fetch_balance() == 7


# -- 3. Numbers Decimal cannot hold ------------------------------------------------------------

HUGE = [
    b"1e999999999",
    b"1e99999999999999999999",
    b"-1e999999999",
    b"1e-99999999999999999999",
    b"9" * 5000,
    b"0." + b"0" * 5000 + b"1",
]


@pytest.mark.parametrize("number", HUGE)
def test_hyper3d_balance_out_of_range_is_provider_error(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, number: bytes
) -> None:
    """A balance Decimal cannot hold is a ProviderError, not a decimal exception."""
    sim.fail(H3D, status=200, body=b'{"balance": ' + number + b"}")
    with pytest.raises(sg.ProviderError, match="malformed balance") as caught:
        hyper3d.fetch_balance()
    assert type(caught.value) is sg.ProviderError


@pytest.mark.parametrize("number", HUGE)
def test_orthogonal_numbers_out_of_range_are_provider_errors(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal, number: bytes
) -> None:
    """balanceCents, a numeric balance and a /v1/details price out of range: ProviderError."""
    sim.fail(CHECK, status=200, body=b'{"sufficient": true, "balanceCents": ' + number + b"}")
    with pytest.raises(sg.ProviderError, match="balanceCents"):
        orthogonal.check("0.01")
    sim.fail(BALANCE, status=200, body=b'{"balance": ' + number + b"}")
    with pytest.raises(sg.ProviderError, match="malformed balance"):
        orthogonal.fetch_balance()
    sim.fail(DETAILS, status=200, body=b'{"endpoint": {"price": ' + number + b"}}")
    with pytest.raises(sg.ProviderError, match="malformed price"):
        orthogonal.price("sim-search", "/search")


def test_parsing_ignores_the_callers_decimal_context(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A caller's two-digit, trap-everything context changes no balance and raises nothing."""
    sim.fail(H3D, status=200, body=b'{"balance": 12.3456789}')
    sim.fail(H3D, status=200, body=b'{"balance": 1e999999999}')
    context = decimal.Context(prec=2, traps=[decimal.Inexact, decimal.Rounded, decimal.Overflow])
    with decimal.localcontext(context):
        assert hyper3d.fetch_balance() == Decimal("12.3456789")
        with pytest.raises(sg.ProviderError):
            hyper3d.fetch_balance()


@pytest.mark.parametrize(
    "body",
    [
        b'{"success": true, "price": 1e999999999, "data": {}}',
        b'{"success": true, "price": 1e99999999999999999999}',
        b'{"success": true, "price": "$99999999999999999999999"}',
        b'{"success": true, "price": -1}',
        b"<html>not json</html>",
    ],
)
def test_paid_run_with_an_unusable_price_returns_the_response(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal, body: bytes
) -> None:
    """After a paid /v1/run, the caller gets its response; the hold settles at its cost."""
    guard = sg.SpendGuard(orthogonal)
    sim.fail(RUN, status=200, body=body)
    with guard.session() as http:
        response = http.post(
            f"{sim.url}/v1/run",
            json={"api": "sim-search", "path": "/search"},
            headers={"Authorization": f"Bearer {sim.api_key}"},
        )
    assert response.status_code == 200
    assert response.content == body
    assert guard.spent == Decimal("0.01")
    assert guard.held == 0


# -- 4. Key fragments ----------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 150, 190, 199, 230])
def test_session_402_message_scrubbed_before_it_is_cut(
    keyed_sim: ProviderSimulator, caplog: pytest.LogCaptureFixture, offset: int
) -> None:
    """A 402 echoing the key anywhere leaves no five characters of it in the error or log."""
    caplog.set_level(logging.DEBUG, logger="spendguard")
    message = "x" * offset + f"no credit left for {KEY} today"
    keyed_sim.fail(RODIN, status=402, body={"error": "INSUFFICIENT", "message": message})
    with sg.Hyper3D(KEY, base_url=keyed_sim.url, timeout=2.0) as provider:
        guard = sg.SpendGuard(provider)
        with guard.session() as http, pytest.raises(sg.InsufficientCredits) as caught:
            http.post(
                f"{keyed_sim.url}/api/v2/rodin",
                data={"prompt": "a chair"},
                headers={"Authorization": f"Bearer {KEY}"},
            )
    assert fragments(str(caught.value)) == []
    assert fragments(repr(caught.value)) == []
    assert fragments(caplog.text) == []


@pytest.mark.parametrize(
    "body",
    [
        {"error": "UNAUTHORIZED", "message": f"bad key {KEY}"},
        {"error": "x", "message": "y" * 190 + KEY},
        {"error": f"key {KEY[:20]} unknown"},
        {"error": "x", "message": f"key {KEY[10:30]} unknown"},
        {"balance": KEY},
    ],
)
def test_provider_errors_hold_no_key_fragment(
    keyed_sim: ProviderSimulator, body: dict[str, object]
) -> None:
    """Messages, reprs and tracebacks with locals show at most the key's first four characters."""
    keyed_sim.fail(H3D, status=401 if "UNAUTHORIZED" in str(body) else 200, body=body)
    with sg.Hyper3D(KEY, base_url=keyed_sim.url, timeout=2.0) as provider:
        with pytest.raises(sg.ProviderError) as caught:
            provider.fetch_balance()
        assert fragments(repr(provider)) == []
    assert fragments(str(caught.value)) == []
    assert fragments(rendered(caught.value)) == []


@pytest.mark.parametrize("provider_class", [sg.Hyper3D, sg.Orthogonal])
def test_traceback_with_locals_of_a_failed_lookup_shows_no_key(
    provider_class: type[sg.Hyper3D] | type[sg.Orthogonal],
) -> None:
    """A lookup that times out deep in the HTTP stack renders no key in any frame's locals."""
    with (
        HostileServer(lambda _request: [(b"", 5.0)]) as server,
        provider_class(KEY, base_url=server.url, timeout=0.3, retries=0) as provider,
        pytest.raises(sg.BalanceUnavailable) as caught,
    ):
        sg.SpendGuard(provider).check(1)
    text = rendered(caught.value)
    assert "urllib3" in text
    assert fragments(text) == []


def test_no_frame_holds_the_key_while_a_request_is_in_flight() -> None:
    """Walking every frame of a thread waiting on an answer finds the key in no local's repr."""
    with HostileServer(lambda _request: [(answer(200, b'{"balance": 1}'), 0.0)]) as server:
        server.gate.clear()
        with sg.Hyper3D(KEY, base_url=server.url, timeout=5.0, retries=0) as provider:
            worker = threading.Thread(target=provider.fetch_balance)
            worker.start()
            deadline = time.monotonic() + 5
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            frame = sys._current_frames().get(worker.ident or 0)
            seen: list[str] = []
            while frame is not None:
                seen.extend(repr(value) for value in frame.f_locals.values())
                frame = frame.f_back
            server.gate.set()
            worker.join()
    assert len(seen) > 20
    assert KEY.encode() in server.requests[0]
    assert fragments("\n".join(seen)) == []


def test_session_frames_below_the_adapter_hold_no_key(keyed_sim: ProviderSimulator) -> None:
    """A guarded request that fails mid-flight shows no key in the frames the library owns."""
    keyed_sim.fail(RODIN, status=200, delay=5.0)
    with sg.Hyper3D(KEY, base_url=keyed_sim.url, timeout=2.0) as provider:
        guard = sg.SpendGuard(provider)
        with guard.session() as http, pytest.raises(requests.ReadTimeout) as caught:
            http.post(
                f"{keyed_sim.url}/api/v2/rodin",
                data={"prompt": "a chair"},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=0.3,
            )
    tb = caught.value.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "send":
        tb = tb.tb_next
    assert tb is not None
    exc = caught.value
    text = "".join(traceback.TracebackException(type(exc), exc, tb, capture_locals=True).format())
    assert "urllib3" in text
    assert fragments(text) == []


def test_providers_do_not_pickle_their_key() -> None:
    """The masked key refuses to be pickled, so it never lands on disk or on the wire."""
    import pickle

    with sg.Hyper3D(KEY, base_url="http://127.0.0.1:9") as provider, pytest.raises(TypeError):
        pickle.dumps(provider)


# -- 5. Billable routes spelled differently ---------------------------------------------------

SPELLINGS = [
    "/api/v2/rodin",
    "//api/v2/rodin",
    "/api/v2/rodin/",
    "/api/v2/rodin;v=2",
    "/api/v2/%72odin",
    "/api/v2/rodin%2F",
    "/API/V2/Rodin",
    "/api/v2/./rodin",
    "/api/v2/status/../rodin",
    "/api//v2///rodin//",
]


@pytest.mark.parametrize("path", SPELLINGS)
def test_rodin_route_is_priced_however_it_is_spelled(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: str
) -> None:
    """Every spelling of POST /api/v2/rodin is priced before it is sent."""
    guard = sg.SpendGuard(hyper3d)
    adapter = sg.GuardedAdapter(guard)
    host = sim.url.replace("http://", "HTTP://").upper()
    request = requests.Request("POST", host + path, data={"tier": "Gen-2.5-Extreme-High"})
    assert adapter.cost(request.prepare()) == Decimal("1.0")


@pytest.mark.parametrize("path", ["/api/v2/status", "/api/v2/rodinx", "/api/v2/check_balance"])
def test_free_routes_stay_free(sim: ProviderSimulator, hyper3d: sg.Hyper3D, path: str) -> None:
    """Routes that only resemble the billable one are not priced."""
    adapter = sg.GuardedAdapter(sg.SpendGuard(hyper3d))
    assert adapter.cost(requests.Request("POST", sim.url + path, data={}).prepare()) is None


def test_user_route_prices_match_normalised_paths(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A price given for /v1/thing also prices //v1/thing/ and https://HOST:443/v1/thing."""
    adapter = sg.GuardedAdapter(
        sg.SpendGuard(hyper3d), {"POST /v1/thing": 2, "GET https://api.example.com/v1/x": 3}
    )
    assert adapter.cost(requests.Request("POST", sim.url + "//v1/thing/").prepare()) == 2
    url = "https://API.example.com:443/v1//x;a=b"
    assert adapter.cost(requests.Request("GET", url).prepare()) == 3


def test_billable_request_whose_price_cannot_be_read_is_not_sent(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A streamed Rodin body cannot be priced: UnknownPrice, and nothing reaches the provider."""
    guard = sg.SpendGuard(hyper3d)
    with guard.session() as http, pytest.raises(UnknownPrice) as caught:
        http.post(
            f"{sim.url}//api/v2/rodin/",
            data=iter([b"prompt=a+chair"]),
            headers={"Authorization": f"Bearer {sim.api_key}"},
        )
    assert caught.value.kind == "request"
    assert isinstance(caught.value, sg.ConfigurationError)
    assert sim.count(RODIN) == 0
    assert guard.held == 0


# -- 6. A 402 reports the real available ---------------------------------------------------------


def test_402_reports_the_available_balance(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A 402 on an account that now holds 0.2 says 0.2 available, not a made-up 0."""
    guard = sg.SpendGuard(hyper3d)
    assert guard.check(0).available == 10
    sim.hyper3d_balance = "0.2"
    sim.fail(RODIN, status=402, body={"error": "x", "message": "Insufficient credits"})
    with guard.session() as http, pytest.raises(sg.InsufficientCredits) as caught:
        http.post(
            f"{sim.url}/api/v2/rodin",
            data={"prompt": "a chair"},
            headers={"Authorization": f"Bearer {sim.api_key}"},
        )
    assert caught.value.available == Decimal("0.2")
    assert caught.value.shortfall == Decimal("0.3")
    assert "0.2 available" in str(caught.value)
    assert sim.count(H3D) == 2


def test_402_says_available_is_unknown_when_the_lookup_fails(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """When the lookup after a 402 fails, the error says available is unknown."""
    guard = sg.SpendGuard(hyper3d)
    guard.check(0)
    sim.fail(RODIN, status=402, body={"error": "x", "message": "Insufficient credits"})
    sim.fail(H3D, status=500, times=10)
    with guard.session() as http, pytest.raises(sg.InsufficientCredits) as caught:
        http.post(
            f"{sim.url}/api/v2/rodin",
            data={"prompt": "a chair"},
            headers={"Authorization": f"Bearer {sim.api_key}"},
        )
    assert caught.value.available is None
    assert caught.value.shortfall is None
    assert "available unknown" in str(caught.value)


# -- 7. Orthogonal's unit scale -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [7, 0, -100, 1000, True, 100.0, "100"])
def test_orthogonal_scale_pin_must_be_a_documented_one(scale: object) -> None:
    """units_per_dollar accepts only None, 100 and 100000."""
    with pytest.raises(sg.ConfigurationError, match="100 or 100000"):
        sg.Orthogonal(KEY, base_url="http://127.0.0.1:9", units_per_dollar=scale)  # type: ignore[arg-type]


def test_orthogonal_wrong_pin_is_caught_against_the_dollar_balance(sim: ProviderSimulator) -> None:
    """A pin of 100 on a 100,000-unit account is refused, naming the scale that fits."""
    with (
        sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100) as provider,
        pytest.raises(sg.ConfigurationError, match="100000"),
    ):
        provider.check("0.01")


def test_orthogonal_one_cent_balance_learns_the_real_scale(sim: ProviderSimulator) -> None:
    """At a $0.01 balance in real cents the scale is learned and $0.005 is affordable."""
    sim.units_per_dollar = 100
    sim.orthogonal_balance = "0.01"
    with sg.Orthogonal(sim.api_key, base_url=sim.url) as provider:
        check = provider.check("0.005")
        assert provider.units_per_dollar == 100
    assert check.sufficient
    assert check.available == Decimal("0.01")


def test_orthogonal_snapshots_are_keyed_by_scale(sim: ProviderSimulator) -> None:
    """Providers that read *Cents differently never share an account snapshot."""
    learned = sg.Orthogonal(sim.api_key, base_url=sim.url)
    pinned = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000)
    cents = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100)
    assert len({learned.account_id, pinned.account_id, cents.account_id}) == 3
    assert learned.account_id == sg.Orthogonal(sim.api_key, base_url=sim.url).account_id
    assert sim.api_key not in learned.account_id


def test_a_pinned_guard_never_inherits_a_learning_guards_snapshot(
    sim: ProviderSimulator,
) -> None:
    """A guard with the scale pinned looks the balance up itself, whatever another guard saw."""
    sim.units_per_dollar = 100
    with (
        sg.Orthogonal(sim.api_key, base_url=sim.url) as learning,
        sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100) as pinned,
    ):
        sg.SpendGuard(learning).check("0.01")
        sim.reset_counts()
        assert sg.SpendGuard(pinned).check("0.01").available == Decimal(5)
        assert sim.count(CHECK) == 1


def test_orthogonal_approval_survives_a_balance_blip(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """An approval at the over-asking scale stands when the dollar lookup is unavailable."""
    sim.fail(BALANCE, status=503, times=3)
    check = orthogonal.check("0.01")
    assert check.sufficient
    assert orthogonal.units_per_dollar is None


def test_orthogonal_refusal_during_a_blip_is_unavailable(sim: ProviderSimulator) -> None:
    """A refusal at the assumed scale while the dollar lookup fails is not a verdict."""
    sim.units_per_dollar = 100
    with sg.Orthogonal(sim.api_key, base_url=sim.url, retries=0) as provider:
        sim.fail(BALANCE, status=503)
        with pytest.raises(sg.BalanceUnavailable):
            provider.check("1")
        assert provider.check("1").sufficient
        assert provider.units_per_dollar == 100


def test_own_session_still_bounds_a_dribbled_body() -> None:
    """With a caller's own session (no timer), a body dribbled a byte at a time is refused."""
    whole = answer(200, b'{"balance": 10}' + b" " * 200)
    head, _, body = whole.partition(b"\r\n\r\n")
    with (
        HostileServer(lambda _request: [(head + b"\r\n\r\n", 0.0), *trickled(body, 0.02)]) as srv,
        requests.Session() as session,
        sg.Hyper3D(KEY, base_url=srv.url, timeout=0.3, session=session) as provider,
    ):
        started = time.monotonic()
        with pytest.raises(sg.BalanceUnavailable, match="timed out"):
            provider.fetch_balance()
        assert time.monotonic() - started <= 0.3 + 0.5


def test_unknown_availability_and_request_prices_pickle() -> None:
    """InsufficientCredits with available unknown and a request's UnknownPrice survive pickling."""
    import pickle

    refusal = sg.InsufficientCredits(
        required=Decimal(1), available=None, unit="credits", provider="hyper3d"
    )
    again = pickle.loads(pickle.dumps(refusal))
    assert (again.available, again.shortfall, str(again)) == (None, None, str(refusal))
    unknown = UnknownPrice(kind="request", name="POST /v1/run", reason="dynamic")
    assert str(pickle.loads(pickle.dumps(unknown))) == str(unknown)


def test_wrong_pin_reaches_the_guards_caller(sim: ProviderSimulator) -> None:
    """A contradicted pin is raised through the guard, and nothing runs."""
    ran: list[int] = []
    with sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100) as provider:
        guard = sg.SpendGuard(provider)

        @guard(cost="0.01")
        def call() -> None:
            ran.append(1)

        with pytest.raises(sg.ConfigurationError, match="units_per_dollar=100"):
            call()
        assert guard.held == 0
    assert ran == []
