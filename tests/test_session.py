"""Guarded HTTP: GuardedSession and GuardedAdapter over real HTTP to the simulator."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
from urllib3.util import Retry

import spendguard as sg
from spendguard.pricing import RODIN_PRICES, UnknownPrice
from spendguard.testing import ProviderSimulator

RODIN = "POST /api/v2/rodin"
RUN = "POST /v1/run"
ZERO = Decimal(0)
H3D_BALANCE = "GET /api/v2/check_balance"


@pytest.fixture
def rodin_guard(sim: ProviderSimulator) -> Iterator[sg.SpendGuard]:
    """A guard on the simulator's Hyper3D account (10 credits), trusting a balance for 60 s."""
    provider = sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2.0)
    try:
        yield sg.SpendGuard(provider, ttl=60)
    finally:
        provider.close()


@pytest.fixture
def orth_guard(sim: ProviderSimulator) -> Iterator[sg.SpendGuard]:
    """A guard on the simulator's Orthogonal account ($5.00), trusting a balance for 60 s."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, timeout=2.0)
    try:
        yield sg.SpendGuard(provider, ttl=60)
    finally:
        provider.close()


@pytest.fixture
def http(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> Iterator[sg.GuardedSession]:
    """A guarded session for the Hyper3D guard, sending the simulator's key."""
    with rodin_guard.session() as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        yield session


@pytest.fixture
def orth_http(sim: ProviderSimulator, orth_guard: sg.SpendGuard) -> Iterator[sg.GuardedSession]:
    """A guarded session for the Orthogonal guard, holding $0.20 for a dynamic price."""
    with orth_guard.session(max_cost="0.20") as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        yield session


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _post(session: requests.Session, url: str, **kwargs: object) -> int:
    with session.post(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status_code


# -- refusals and charges ------------------------------------------------------------------


def test_refused_request_never_reaches_server(
    sim: ProviderSimulator, http: sg.GuardedSession
) -> None:
    """A Rodin request the balance cannot pay raises InsufficientCredits and is never sent."""
    sim.hyper3d_balance = "0.4"
    with pytest.raises(sg.InsufficientCredits, match=r"need 0\.5 credits, 0\.4 available"):
        http.post(f"{sim.url}/api/v2/rodin", data={"prompt": "a chair"})
    assert sim.count(RODIN) == 0


def test_admitted_request_is_charged_once(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """An admitted request is sent once, charged once, and settled at its cost."""
    assert _post(http, f"{sim.url}/api/v2/rodin", data={"prompt": "a chair"}) == 201
    assert [c.amount for c in sim.charges] == [Decimal("0.5")]
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("0.5"), ZERO)


def test_multipart_body_is_priced(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A multipart form with an image is priced from its tier and addons fields."""
    status = _post(
        http,
        f"{sim.url}/api/v2/rodin",
        data={"tier": "Regular", "addons": "HighPack"},
        files={"images": ("chair.png", b"\x89PNG\r\n--not-a-boundary", "image/png")},
    )
    assert status == 201
    assert [c.amount for c in sim.charges] == [Decimal("1.5")]
    assert rodin_guard.spent == Decimal("1.5")


def test_urlencoded_body_is_priced(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """An urlencoded form with repeated addons is priced from its fields."""
    data = {"prompt": "a chair", "tier": "Gen-2.5-Extreme-High", "addons": ["HighPack"]}
    assert _post(http, f"{sim.url}/api/v2/rodin", data=data) == 201
    assert [c.amount for c in sim.charges] == [Decimal("2.0")] == [rodin_guard.spent]


def test_addons_as_json_array_string(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """Addons sent as a JSON-array string are priced like repeated fields."""
    assert _post(http, f"{sim.url}/api/v2/rodin", data={"addons": '["HighPack"]'}) == 201
    assert [c.amount for c in sim.charges] == [Decimal("1.5")] == [rodin_guard.spent]


def test_json_body_is_priced(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A JSON body is read like a form."""
    body = {"prompt": "a chair", "tier": "Sketch", "addons": ["HighPack"]}
    assert _post(http, f"{sim.url}/api/v2/rodin", json=body) == 201
    assert rodin_guard.spent == Decimal("1.5")


def test_unpriced_tier_is_refused_before_sending(
    sim: ProviderSimulator, http: sg.GuardedSession
) -> None:
    """A tier without a published price is a ConfigurationError and is never sent."""
    with pytest.raises(UnknownPrice, match="'Detail'"):
        http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Detail"})
    assert sim.count(RODIN) == 0


@pytest.mark.parametrize("made_by", ["GuardedSession", "guard.session"])
def test_rodin_prices_override(
    sim: ProviderSimulator, rodin_guard: sg.SpendGuard, made_by: str
) -> None:
    """With an extended price table the Detail tier is priced and sent."""
    table = RODIN_PRICES.with_tiers(Detail="0.5")
    session = (
        sg.GuardedSession(rodin_guard, rodin_prices=table)
        if made_by == "GuardedSession"
        else rodin_guard.session(rodin_prices=table)
    )
    with session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        assert _post(session, f"{sim.url}/api/v2/rodin", data={"tier": "Detail"}) == 201
    assert rodin_guard.spent == Decimal("0.5")


def test_streamed_body_cannot_be_priced(sim: ProviderSimulator, http: sg.GuardedSession) -> None:
    """A billable request whose body is a generator is refused, unsent."""
    with pytest.raises(sg.ConfigurationError, match="streamed"):
        http.post(
            f"{sim.url}/api/v2/rodin",
            data=iter([b"tier=Regular"]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert sim.count(RODIN) == 0


def test_twenty_threads_never_overspend(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """20 threads sharing one session against a balance for 7 calls: exactly 7 are charged."""
    sim.hyper3d_balance = "3.5"
    barrier = threading.Barrier(20)
    outcomes: list[object] = []
    lock = threading.Lock()

    def generate() -> None:
        barrier.wait()
        try:
            outcome: object = _post(http, f"{sim.url}/api/v2/rodin", data={"tier": "Regular"})
        except sg.InsufficientCredits as exc:
            outcome = type(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=generate) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes)) == sorted(["201"] * 7 + [str(sg.InsufficientCredits)] * 13)
    assert len(sim.charges) == 7 == sim.count(RODIN)
    assert all(charge.balance_after >= 0 for charge in sim.charges)
    assert sim.hyper3d_balance == 0
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("3.5"), ZERO)


# -- free routes and user prices -------------------------------------------------------


def test_free_routes_pass_without_holding(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """Status polls, downloads and balance checks go straight through: no hold, no lookup."""
    assert _post(http, f"{sim.url}/api/v2/status", data={"subscription_key": "k"}) == 201
    assert _post(http, f"{sim.url}/api/v2/download", data={"task_uuid": "t"}) == 201
    with http.get(f"{sim.url}/api/v2/check_balance") as response:
        assert response.json()["balance"] == 10
    assert sim.count(H3D_BALANCE) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_user_price_for_exact_route(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """A "METHOD /path" price holds and settles that amount."""
    with rodin_guard.session({"POST /api/v2/status": "0.25"}) as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        assert _post(session, f"{sim.url}/api/v2/status") == 201
    assert rodin_guard.spent == Decimal("0.25")


def test_user_price_glob_and_url(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """Glob patterns match the path; patterns with :// match the whole URL."""
    prices: dict[str, sg.Amount] = {"POST /api/v2/st*": 1, f"* {sim.url}/api/v2/download": "2"}
    with rodin_guard.session(prices) as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        assert _post(session, f"{sim.url}/api/v2/status?x=1") == 201
        assert _post(session, f"{sim.url}/api/v2/download") == 201
    assert rodin_guard.spent == 3


def test_user_price_callable(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """A callable prices each PreparedRequest; None from it means free."""

    def price(request: requests.PreparedRequest) -> str | None:
        return "1" if "paid" in str(request.body) else None

    with rodin_guard.session({"POST /api/v2/status": price}) as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        assert _post(session, f"{sim.url}/api/v2/status", data={"q": "paid"}) == 201
        assert _post(session, f"{sim.url}/api/v2/status", data={"q": "free"}) == 201
    assert rodin_guard.spent == 1


def test_user_price_overrides_builtin(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """A user price of None turns the built-in Rodin pricing off for that route."""
    with rodin_guard.session({"POST /api/v2/rodin": None}) as session:
        session.headers["Authorization"] = f"Bearer {sim.api_key}"
        assert _post(session, f"{sim.url}/api/v2/rodin", data={"tier": "Regular"}) == 201
    assert len(sim.charges) == 1
    assert rodin_guard.spent == 0


@pytest.mark.parametrize("key", ["/api/v2/rodin", "POST api/v2/rodin", "POST", ""])
def test_malformed_price_key(rodin_guard: sg.SpendGuard, key: str) -> None:
    """A price key that is not "METHOD pattern" is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError, match="METHOD /path"):
        rodin_guard.session({key: 1})


def test_malformed_price_amount(rodin_guard: sg.SpendGuard) -> None:
    """A negative route price is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError, match="must not be negative"):
        rodin_guard.session({"POST /x": "-1"})


# -- 402 -------------------------------------------------------------------------------------


def test_402_becomes_insufficient_credits(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A 402 raises InsufficientCredits quoting the provider, drops the cache, charges nothing."""
    rodin_guard.balance()
    sim.hyper3d_balance = "0.2"  # behind the guard's back: its snapshot still says 10
    with pytest.raises(sg.InsufficientCredits, match=r"HTTP 402: Insufficient credits"):
        http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Regular"})
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)
    assert not rodin_guard.check("0.5").sufficient
    assert sim.count(H3D_BALANCE) == 2


@pytest.mark.parametrize(
    ("limit", "cause"),
    [
        (None, "the account's credit is insufficient"),
        ("key_daily_limit_usd", "the API key's daily spend limit is reached"),
        ("account_daily_limit_usd", "the account's daily spend limit is reached"),
    ],
)
def test_orthogonal_402_causes(
    sim: ProviderSimulator,
    orth_http: sg.GuardedSession,
    orth_guard: sg.SpendGuard,
    limit: str | None,
    cause: str,
) -> None:
    """Orthogonal's three 402 causes are told apart in the exception text."""
    orth_guard.balance()
    if limit is None:
        sim.orthogonal_balance = "0.05"
    else:
        setattr(sim, limit, "0.05")
    with pytest.raises(sg.InsufficientCredits) as info:
        orth_http.post(f"{sim.url}/v1/run", json={"api": "sim-enrich", "path": "/enrich"})
    assert cause in str(info.value)
    assert info.value.required == Decimal("0.10")
    assert sim.count(RUN) == 1
    assert sim.charges == []


# -- Orthogonal ------------------------------------------------------------------------------


def test_orthogonal_run_settles_at_answered_price(
    sim: ProviderSimulator, orth_http: sg.GuardedSession, orth_guard: sg.SpendGuard
) -> None:
    """/v1/run holds the listed price and settles at the price its answer reports."""
    orth_guard.provider.price("sim-enrich", "/enrich")  # type: ignore[attr-defined]
    sim.orthogonal_prices["sim-enrich", "/enrich"] = "0.07"  # the cached price says 0.10
    assert _post(orth_http, f"{sim.url}/v1/run", json={"api": "sim-enrich", "path": "/enrich"})
    assert orth_guard.spent == Decimal("0.07")


def test_dynamic_price_without_max_cost(sim: ProviderSimulator, orth_guard: sg.SpendGuard) -> None:
    """A dynamic price without max_cost is a ConfigurationError explaining why; nothing is sent."""
    with (
        orth_guard.session() as session,
        pytest.raises(sg.ConfigurationError, match=r"dynamic price.*max_cost="),
    ):
        session.post(f"{sim.url}/v1/run", json={"api": "sim-dynamic", "path": "/run"})
    assert sim.count(RUN) == 0


def test_dynamic_price_settles_at_actual(
    sim: ProviderSimulator, orth_http: sg.GuardedSession, orth_guard: sg.SpendGuard
) -> None:
    """With max_cost a dynamic call is held and settled at what it really cost."""
    assert _post(orth_http, f"{sim.url}/v1/run", json={"api": "sim-dynamic", "path": "/run"})
    assert [c.amount for c in sim.charges] == [Decimal("0.05")] == [orth_guard.spent]


def test_dynamic_price_holds_max_cost(sim: ProviderSimulator, orth_http: sg.GuardedSession) -> None:
    """A dynamic call needs max_cost to be available, not just its eventual price."""
    sim.orthogonal_balance = "0.10"
    with pytest.raises(sg.InsufficientCredits, match=r"need \$0.20"):
        orth_http.post(f"{sim.url}/v1/run", json={"api": "sim-dynamic", "path": "/run"})
    assert sim.count(RUN) == 0


def test_orthogonal_run_without_endpoint(
    sim: ProviderSimulator, orth_http: sg.GuardedSession
) -> None:
    """A /v1/run body without api and path cannot be priced and is not sent."""
    with pytest.raises(sg.ConfigurationError, match="'api' and 'path'"):
        orth_http.post(f"{sim.url}/v1/run", json={"body": {}})
    assert sim.count(RUN) == 0


# -- transport ---------------------------------------------------------------------------


def test_adapter_on_plain_session(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """GuardedAdapter mounted on a user's own Session guards it."""
    with requests.Session() as session:
        session.mount(sim.url, sg.GuardedAdapter(rodin_guard))
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        assert _post(session, f"{sim.url}/api/v2/rodin", headers=headers) == 201
        sim.hyper3d_balance = "0.4"
        rodin_guard.invalidate()
        with pytest.raises(sg.InsufficientCredits):
            session.post(f"{sim.url}/api/v2/rodin", headers=headers)
    assert sim.count(RODIN) == 1
    assert rodin_guard.spent == Decimal("0.5")


def test_billable_503_is_not_retried(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A billable request answered 503 is sent once, returned as is, and its hold released."""
    sim.fail(RODIN, status=503, times=3)
    assert _post(http, f"{sim.url}/api/v2/rodin", data={"tier": "Regular"}) == 503
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_connection_refused_releases(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """When no connection can be opened nothing was sent: the hold is given back."""
    with pytest.raises(requests.ConnectionError):
        http.post(f"{_closed_port_url()}/api/v2/rodin", data={"tier": "Regular"})
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_dropped_connection_maybe_charged(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A connection dropped after sending keeps the cost counted, and is not retried."""
    sim.fail(RODIN, drop=True, times=3)
    with pytest.raises(requests.ConnectionError):
        http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Regular"})
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("0.5"), ZERO)


def test_read_timeout_maybe_charged(
    sim: ProviderSimulator, http: sg.GuardedSession, rodin_guard: sg.SpendGuard
) -> None:
    """A read timeout keeps the cost counted until the next lookup, and is not retried."""
    sim.slow(RODIN, 1.0)
    with pytest.raises(requests.ReadTimeout):
        http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Regular"}, timeout=0.2)
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("0.5"), ZERO)


def test_adapter_never_retries(rodin_guard: sg.SpendGuard) -> None:
    """The adapter makes one attempt, and a retrying policy cannot be set on it."""
    adapter = sg.GuardedAdapter(rodin_guard)
    assert adapter.max_retries.total == 0
    with pytest.raises(sg.ConfigurationError, match="never retries"):
        adapter.max_retries = Retry(3)
    adapter.close()


def test_adapter_cost(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """cost() prices a PreparedRequest without sending it; free routes are None."""
    adapter = sg.GuardedAdapter(rodin_guard)
    paid = requests.Request(
        "POST", f"{sim.url}/api/v2/rodin", data={"tier": "Gen-2.5-Extreme-High"}
    )
    free = requests.Request("POST", f"{sim.url}/api/v2/status")
    assert adapter.cost(paid.prepare()) == Decimal("1.0")
    assert adapter.cost(free.prepare()) is None
    assert sim.count() == 0
    adapter.close()


def test_guard_session_is_a_requests_session(
    rodin_guard: sg.SpendGuard, sim: ProviderSimulator
) -> None:
    """guard.session() is a GuardedSession, a requests.Session, whose repr hides the key."""
    with rodin_guard.session() as session:
        assert isinstance(session, sg.GuardedSession)
        assert isinstance(session, requests.Session)
        assert session.guard is rodin_guard
        assert sim.api_key not in repr(session)
        assert "hyper3d" in repr(session)
