"""The provider simulator, over real loopback HTTP."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from http.client import HTTPConnection
from typing import Any

import pytest
import requests

from spendguard.testing import Charge, ProviderSimulator, RecordedRequest

AUTH = {"Authorization": "Bearer sim-test-key"}
TIMEOUT = 5.0


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    """A running simulator with default balances."""
    with ProviderSimulator() as simulator:
        yield simulator


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A keep-alive session that sends the simulator's key."""
    with requests.Session() as client:
        client.headers.update(AUTH)
        yield client


def get(session: requests.Session, sim: ProviderSimulator, path: str) -> requests.Response:
    """GET a path of the simulator."""
    return session.get(sim.url + path, timeout=TIMEOUT)


def post(
    session: requests.Session, sim: ProviderSimulator, path: str, **kw: Any
) -> requests.Response:
    """POST to a path of the simulator."""
    return session.post(sim.url + path, timeout=TIMEOUT, **kw)


def run(
    session: requests.Session, sim: ProviderSimulator, api: str, path: str
) -> requests.Response:
    """Make a paid Orthogonal call."""
    return post(session, sim, "/v1/run", json={"api": api, "path": path})


# -- Orthogonal ----------------------------------------------------------------------------


def test_orthogonal_balance_is_a_dollar_string(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """GET /v1/credits/balance answers 200 with the balance as "$5.00"."""
    response = get(session, sim, "/v1/credits/balance")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"balance": "$5.00"}


@pytest.mark.parametrize(
    ("balance", "shown"),
    [
        ("1234.56", "$1,234.56"),
        ("1234567.891", "$1,234,567.89"),
        ("-0.5", "-$0.50"),
        ("-1234.5", "-$1,234.50"),
        ("0.005", "$0.00"),
        ("0.015", "$0.02"),
        ("0.025", "$0.02"),
        ("-0.001", "$0.00"),
        (7, "$7.00"),
    ],
)
def test_orthogonal_balance_formatting(
    sim: ProviderSimulator, session: requests.Session, balance: str | int, shown: str
) -> None:
    """Balances round half-even to cents, with thousands separators and a leading minus."""
    sim.orthogonal_balance = balance
    assert get(session, sim, "/v1/credits/balance").json() == {"balance": shown}


def test_check_in_hundred_thousandths(sim: ProviderSimulator, session: requests.Session) -> None:
    """POST /v1/credits/check counts 100,000 units per dollar by default."""
    response = post(session, sim, "/v1/credits/check", json={"amountCents": 100})
    assert response.status_code == 200
    assert response.json() == {
        "sufficient": True,
        "balanceCents": 500000,
        "requiredCents": 100,
        "shortfallCents": 0,
    }


def test_check_in_real_cents(session: requests.Session) -> None:
    """With units_per_dollar=100 the balance floors to whole cents and a shortfall shows."""
    with ProviderSimulator(orthogonal_usd="5.009", units_per_dollar=100) as sim:
        assert post(session, sim, "/v1/credits/check", json={"amountCents": 600}).json() == {
            "sufficient": False,
            "balanceCents": 500,
            "requiredCents": 600,
            "shortfallCents": 100,
        }
        sim.units_per_dollar = 100_000
        body = post(session, sim, "/v1/credits/check", json={"amountCents": 600}).json()
        assert body["balanceCents"] == 500900


@pytest.mark.parametrize(
    "payload", [{"amountCents": -1}, {"amountCents": 1.5}, {}, {"amountCents": "9"}]
)
def test_check_rejects_bad_amounts(
    sim: ProviderSimulator, session: requests.Session, payload: dict[str, object]
) -> None:
    """amountCents must be a non-negative integer, else 400 BAD_REQUEST."""
    response = post(session, sim, "/v1/credits/check", json=payload)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("api", "path", "price_json"),
    [
        ("sim-search", "/search", '"price":"$0.01"'),
        ("sim-enrich", "/enrich", '"price":"0.10"'),
        ("sim-scrape", "/scrape", '"price":0.03'),
        ("sim-dynamic", "/run", '"price":"dynamic"'),
    ],
)
def test_details_emits_price_verbatim(
    sim: ProviderSimulator, session: requests.Session, api: str, path: str, price_json: str
) -> None:
    """POST /v1/details returns the listed price as stored: dollar string, string or number."""
    response = post(session, sim, "/v1/details", json={"api": api, "path": path})
    assert response.status_code == 200
    assert price_json in response.text
    endpoint = response.json()["endpoint"]
    assert (endpoint["api"], endpoint["path"], endpoint["isPayable"]) == (api, path, True)


def test_details_decimal_price_is_an_exact_number(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """A Decimal price is written as an exact JSON number."""
    sim.orthogonal_prices[("exact", "/x")] = Decimal("0.0123456789012345678")
    response = post(session, sim, "/v1/details", json={"api": "exact", "path": "/x"})
    assert '"price":0.0123456789012345678' in response.text


def test_details_unknown_endpoint_is_404(sim: ProviderSimulator, session: requests.Session) -> None:
    """An endpoint missing from the price table answers 404 NOT_FOUND."""
    response = post(session, sim, "/v1/details", json={"api": "nope", "path": "/x"})
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "Endpoint not found: nope /x",
        "code": "NOT_FOUND",
    }


def test_run_charges_the_listed_price(sim: ProviderSimulator, session: requests.Session) -> None:
    """POST /v1/run deducts the price, records a Charge and echoes the body."""
    response = post(
        session,
        sim,
        "/v1/run",
        json={"api": "sim-enrich", "path": "/enrich", "body": {"q": "x", "n": 1.25}},
    )
    assert response.status_code == 200
    body = response.json()
    uuid.UUID(body.pop("requestId"))
    assert body == {
        "success": True,
        "price": "0.10",
        "priceCents": 10000,
        "data": {"echo": {"q": "x", "n": 1.25}},
    }
    assert sim.orthogonal_balance == Decimal("4.90")
    assert sim.charges == [Charge("orthogonal", Decimal("0.10"), Decimal("4.90"))]


@pytest.mark.parametrize(
    ("api", "path", "price", "units"),
    [
        ("sim-search", "/search", "0.01", 1),
        ("sim-scrape", "/scrape", "0.03", 3),
        ("sim-micro", "/ping", "0.001", 1),
        ("sim-dynamic", "/run", "0.05", 5),
    ],
)
def test_run_price_in_real_cents(
    session: requests.Session, api: str, path: str, price: str, units: int
) -> None:
    """With 100 units per dollar priceCents is in cents, rounded up."""
    with ProviderSimulator(units_per_dollar=100) as sim:
        body = run(session, sim, api, path).json()
        assert (body["price"], body["priceCents"]) == (price, units)
        assert sim.orthogonal_balance == Decimal("5.00") - Decimal(price)


def test_run_dynamic_price_is_settable(sim: ProviderSimulator, session: requests.Session) -> None:
    """A "dynamic" endpoint charges orthogonal_dynamic_price."""
    sim.orthogonal_dynamic_price = "0.25"
    body = run(session, sim, "sim-dynamic", "/run").json()
    assert (body["price"], body["priceCents"]) == ("0.25", 25000)
    assert sim.orthogonal_balance == Decimal("4.75")


def test_run_insufficient_credit_is_402(sim: ProviderSimulator, session: requests.Session) -> None:
    """A call the balance cannot pay answers 402 and charges nothing."""
    sim.orthogonal_balance = "0.01"
    response = run(session, sim, "sim-enrich", "/enrich")
    assert response.status_code == 402
    assert response.json() == {
        "success": False,
        "error": "Insufficient credits: balance $0.01, required $0.10",
        "code": "INSUFFICIENT_CREDITS",
    }
    assert sim.orthogonal_balance == Decimal("0.01")
    assert sim.charges == []


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("key_daily_limit_usd", "Daily spend limit reached for this API key"),
        ("account_daily_limit_usd", "Daily spend limit reached for this account"),
    ],
)
def test_run_daily_limits_are_402(
    sim: ProviderSimulator, session: requests.Session, limit: str, message: str
) -> None:
    """Daily spend limits refuse with 402 INSUFFICIENT_CREDITS and say which limit."""
    setattr(sim, limit, "0.15")
    assert run(session, sim, "sim-enrich", "/enrich").status_code == 200
    response = run(session, sim, "sim-enrich", "/enrich")
    assert response.status_code == 402
    assert response.json() == {"success": False, "error": message, "code": "INSUFFICIENT_CREDITS"}
    assert sim.orthogonal_balance == Decimal("4.90")
    sim.orthogonal_daily_spend = 0
    assert run(session, sim, "sim-enrich", "/enrich").status_code == 200


def test_run_unknown_endpoint_is_404(sim: ProviderSimulator, session: requests.Session) -> None:
    """A paid call to an unlisted endpoint answers 404 and charges nothing."""
    response = run(session, sim, "nope", "/x")
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"
    assert sim.charges == []


def test_run_accepts_a_chunked_body(sim: ProviderSimulator, session: requests.Session) -> None:
    """A chunked request body is read whole."""
    chunks = iter([b'{"api": "sim-search",', b' "path": "/search"}'])
    response = post(
        session, sim, "/v1/run", data=chunks, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["price"] == "0.01"


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", b'{"api": 1, "path": "/x"}', b'{"api": "a"}', b"NaN", b"\xff\xfe"],
)
def test_orthogonal_garbage_is_400(
    sim: ProviderSimulator, session: requests.Session, payload: bytes
) -> None:
    """Malformed bodies answer 400 BAD_REQUEST and the server keeps serving."""
    response = post(session, sim, "/v1/run", data=payload)
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"
    assert get(session, sim, "/v1/credits/balance").status_code == 200


# -- Hyper3D -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credits", "text"),
    [("10", '{"balance":10}'), ("12.5", '{"balance":12.5}'), (0, '{"balance":0}')],
)
def test_hyper3d_balance_is_an_exact_number(
    sim: ProviderSimulator, session: requests.Session, credits: str | int, text: str
) -> None:
    """GET /api/v2/check_balance answers 201 with an integer or decimal JSON number."""
    sim.hyper3d_balance = credits
    response = get(session, sim, "/api/v2/check_balance")
    assert response.status_code == 201
    assert response.text == text


def test_rodin_multipart_with_highpack(sim: ProviderSimulator, session: requests.Session) -> None:
    """A multipart submission with an image and HighPack costs tier + addon."""
    response = post(
        session,
        sim,
        "/api/v2/rodin",
        files={"images": ("chair.png", b"\x89PNG\r\n\x1a\n--x--", "image/png")},
        data={"prompt": "a chair", "tier": "Gen-2", "addons": "HighPack"},
    )
    assert response.status_code == 201
    body = response.json()
    job = body["uuid"]
    uuid.UUID(job)
    assert body == {
        "error": None,
        "message": "Submitted.",
        "uuid": job,
        "jobs": {"uuids": [job], "subscription_key": body["jobs"]["subscription_key"]},
    }
    assert body["jobs"]["subscription_key"]
    assert sim.hyper3d_balance == Decimal("8.5")
    assert sim.charges == [Charge("hyper3d", Decimal("1.5"), Decimal("8.5"))]


def test_rodin_multipart_text_fields_only(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """Multipart text parts with repeated addons are read; a repeat is charged once."""
    fields = [
        ("prompt", (None, "a lamp")),
        ("tier", (None, "Gen-2.5-Extreme-High")),
        ("addons", (None, "HighPack")),
        ("addons", (None, "HighPack")),
    ]
    response = post(session, sim, "/api/v2/rodin", files=fields)
    assert response.status_code == 201
    assert sim.charges == [Charge("hyper3d", Decimal("2.0"), Decimal("8.0"))]


@pytest.mark.parametrize(
    ("fields", "cost"),
    [
        ({"prompt": "x"}, "0.5"),
        ({"prompt": "x", "tier": "Sketch", "addons": '["HighPack"]'}, "1.5"),
        ({"prompt": "x", "tier": "Gen-2.5-Extreme-High", "addons": ["HighPack"]}, "2.0"),
        ({"prompt": "x", "tier": "Detail"}, "0.5"),
    ],
)
def test_rodin_urlencoded(
    sim: ProviderSimulator, session: requests.Session, fields: dict[str, Any], cost: str
) -> None:
    """A urlencoded submission defaults to Regular and reads addons in any form."""
    response = post(session, sim, "/api/v2/rodin", data=fields)
    assert response.status_code == 201
    assert sim.hyper3d_balance == Decimal(10) - Decimal(cost)


def test_rodin_unknown_tier_is_400(sim: ProviderSimulator, session: requests.Session) -> None:
    """An unknown tier answers 400 INVALID_TIER and charges nothing."""
    response = post(session, sim, "/api/v2/rodin", data={"prompt": "x", "tier": "Gen-9"})
    assert response.status_code == 400
    assert response.json() == {"error": "INVALID_TIER", "message": "Unknown tier: 'Gen-9'"}
    assert sim.hyper3d_balance == Decimal(10)


def test_rodin_insufficient_credit_is_402(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """A generation the balance cannot pay answers 402 INSUFFICIENT_FUND and charges nothing."""
    sim.hyper3d_balance = "1.4"
    response = post(session, sim, "/api/v2/rodin", data={"prompt": "x", "addons": "HighPack"})
    assert response.status_code == 402
    assert response.json() == {"error": "INSUFFICIENT_FUND", "message": "Insufficient credits"}
    assert sim.hyper3d_balance == Decimal("1.4")
    assert sim.charges == []


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=zz", b"garbage"),
        ("text/plain", b"prompt=x"),
        ("application/x-www-form-urlencoded", b"tier=%ff%fe&addons=[1"),
    ],
)
def test_rodin_garbage_is_400(
    sim: ProviderSimulator, session: requests.Session, content_type: str, payload: bytes
) -> None:
    """Malformed submissions answer 400 in Hyper3D's error shape and charge nothing."""
    response = post(
        session, sim, "/api/v2/rodin", data=payload, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error", "message"}
    assert sim.hyper3d_balance == Decimal(10)


def test_status_and_download_are_free(sim: ProviderSimulator, session: requests.Session) -> None:
    """Status lists the submitted job as Done and download lists a .glb, at no cost."""
    jobs = post(session, sim, "/api/v2/rodin", data={"prompt": "x"}).json()["jobs"]
    status = post(
        session, sim, "/api/v2/status", json={"subscription_key": jobs["subscription_key"]}
    )
    assert status.status_code == 201
    assert status.json() == {"error": "OK", "jobs": [{"uuid": jobs["uuids"][0], "status": "Done"}]}
    download = post(session, sim, "/api/v2/download", json={"task_uuid": jobs["uuids"][0]})
    assert download.status_code == 201
    listing = download.json()
    assert listing["error"] == "OK"
    assert listing["list"][0]["name"] == "base.glb"
    assert listing["list"][0]["url"].startswith(sim.url)
    assert session.get(listing["list"][0]["url"], timeout=TIMEOUT).content.startswith(b"glTF")
    assert sim.hyper3d_balance == Decimal("9.5")


# -- both providers ------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "Bearer wrong", "sim-test-key"])
@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("GET /v1/credits/balance", {"success": False, "code": "UNAUTHORIZED"}),
        ("POST /v1/run", {"success": False, "code": "UNAUTHORIZED"}),
        ("GET /api/v2/check_balance", {"error": "UNAUTHORIZED"}),
        ("POST /api/v2/rodin", {"error": "UNAUTHORIZED"}),
    ],
)
def test_bad_key_is_401(
    sim: ProviderSimulator,
    session: requests.Session,
    key: str | None,
    route: str,
    expected: dict[str, object],
) -> None:
    """A missing or wrong Bearer key answers 401 in the provider's error shape."""
    method, path = route.split()
    headers = {"Authorization": key}
    response = session.request(method, sim.url + path, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    assert expected.items() <= response.json().items()
    assert sim.charges == []


def test_api_key_is_settable(sim: ProviderSimulator, session: requests.Session) -> None:
    """Changing api_key changes the accepted key at once."""
    sim.api_key = "orth_test_other"
    assert get(session, sim, "/v1/credits/balance").status_code == 401
    session.headers["Authorization"] = "Bearer orth_test_other"
    assert get(session, sim, "/v1/credits/balance").status_code == 200


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/v1/nothing",
            {"success": False, "error": "Not found: GET /v1/nothing", "code": "NOT_FOUND"},
        ),
        ("/api/v2/nothing", {"error": "NOT_FOUND", "message": "Not found: GET /api/v2/nothing"}),
    ],
)
def test_unknown_path_is_json_404(
    sim: ProviderSimulator, session: requests.Session, path: str, expected: dict[str, object]
) -> None:
    """Unknown paths answer 404 JSON in the provider's error shape."""
    response = get(session, sim, path)
    assert response.status_code == 404
    assert response.json() == expected


def test_balance_setters_take_exact_amounts(sim: ProviderSimulator) -> None:
    """Balance setters accept str, int and Decimal and reject non-numbers."""
    sim.orthogonal_balance = Decimal("1.005")
    sim.hyper3d_balance = 3
    assert (sim.orthogonal_balance, sim.hyper3d_balance) == (Decimal("1.005"), Decimal(3))
    with pytest.raises(ValueError, match="not a number"):
        sim.orthogonal_balance = "five"
    with pytest.raises(ValueError, match="finite"):
        sim.hyper3d_balance = "NaN"


# -- faults --------------------------------------------------------------------------------


def test_fail_with_status_body_and_headers(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """fail() answers once with the given status, JSON body and headers, then serves normally."""
    sim.fail(
        "POST /v1/run",
        status=429,
        body={"success": False, "error": "slow down", "code": "RATE_LIMITED"},
        headers={"Retry-After": "2"},
    )
    response = run(session, sim, "sim-search", "/search")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {"success": False, "error": "slow down", "code": "RATE_LIMITED"}
    assert sim.charges == []
    assert run(session, sim, "sim-search", "/search").status_code == 200


def test_fail_with_an_html_page(sim: ProviderSimulator, session: requests.Session) -> None:
    """A str body is sent raw, as HTML when it looks like HTML."""
    sim.fail("GET /v1/credits/balance", status=502, body="<html><h1>502 Bad Gateway</h1></html>")
    response = get(session, sim, "/v1/credits/balance")
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text == "<html><h1>502 Bad Gateway</h1></html>"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/credits/balance", {"success": False, "code": "UPSTREAM_ERROR"}),
        ("/api/v2/check_balance", {"error": "INTERNAL_SERVER_ERROR"}),
    ],
)
def test_fail_default_body_is_the_provider_envelope(
    sim: ProviderSimulator, session: requests.Session, path: str, expected: dict[str, object]
) -> None:
    """Without a body, a fault answers with the provider's own error envelope."""
    sim.fail(path, status=503)
    response = get(session, sim, path)
    assert response.status_code == 503
    assert expected.items() <= response.json().items()


def test_fail_drop_closes_without_answer(sim: ProviderSimulator, session: requests.Session) -> None:
    """drop=True closes the connection without a response; the next request is served."""
    sim.fail("POST /v1/run", drop=True)
    with pytest.raises(requests.ConnectionError):
        run(session, sim, "sim-search", "/search")
    assert sim.charges == []
    assert run(session, sim, "sim-search", "/search").status_code == 200


def test_slow_answer_trips_a_client_timeout(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """slow() delays the answer past a short client timeout, once."""
    sim.slow("GET /v1/credits/balance", 3.0)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        session.get(sim.url + "/v1/credits/balance", timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert get(session, sim, "/v1/credits/balance").status_code == 200


def test_slow_answer_is_normal(sim: ProviderSimulator, session: requests.Session) -> None:
    """slow() with a short delay still answers normally."""
    sim.slow("/v1/run", 0.1)
    started = time.monotonic()
    assert run(session, sim, "sim-search", "/search").status_code == 200
    assert time.monotonic() - started >= 0.1


def test_fail_with_delay_then_status(sim: ProviderSimulator, session: requests.Session) -> None:
    """A fault with a delay waits before answering with its status."""
    sim.fail("GET /api/v2/check_balance", status=504, delay=0.1)
    started = time.monotonic()
    assert get(session, sim, "/api/v2/check_balance").status_code == 504
    assert time.monotonic() - started >= 0.1


def test_faults_are_consumed_in_order(sim: ProviderSimulator, session: requests.Session) -> None:
    """times=N applies a fault N times, then the next queued fault applies."""
    sim.fail("GET /v1/credits/balance", status=500, times=2)
    sim.fail("GET /v1/credits/balance", status=429)
    statuses = [get(session, sim, "/v1/credits/balance").status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]


def test_star_route_matches_any_request(sim: ProviderSimulator, session: requests.Session) -> None:
    """A "*" fault hits whatever request comes next, on either provider."""
    sim.fail("*", status=503, times=2)
    assert get(session, sim, "/api/v2/check_balance").status_code == 503
    assert post(session, sim, "/v1/credits/check", json={"amountCents": 1}).status_code == 503
    assert get(session, sim, "/api/v2/check_balance").status_code == 201


def test_fault_on_another_route_is_left_alone(
    sim: ProviderSimulator, session: requests.Session
) -> None:
    """A fault waits for its own route; clear_faults() drops it."""
    sim.fail("POST /v1/run", status=500)
    assert get(session, sim, "/v1/credits/balance").status_code == 200
    sim.clear_faults()
    assert run(session, sim, "sim-search", "/search").status_code == 200


def test_fault_arguments_are_checked(sim: ProviderSimulator) -> None:
    """Malformed routes, counts, statuses and delays raise ValueError."""
    with pytest.raises(ValueError, match="route"):
        sim.fail("v1/run")
    with pytest.raises(ValueError, match="times"):
        sim.fail("*", times=0)
    with pytest.raises(ValueError, match="status"):
        sim.fail("*", status=42)
    with pytest.raises(ValueError, match="delay"):
        sim.slow("*", -1.0)


# -- observation ---------------------------------------------------------------------------


def test_counts_per_route_and_reset(sim: ProviderSimulator, session: requests.Session) -> None:
    """count() includes refused and faulted requests; reset_counts() starts over."""
    sim.fail("GET /v1/credits/balance", status=503)
    assert get(session, sim, "/v1/credits/balance").status_code == 503
    unauthorized = session.get(
        sim.url + "/v1/credits/balance", headers={"Authorization": None}, timeout=TIMEOUT
    )
    assert unauthorized.status_code == 401
    assert get(session, sim, "/v1/credits/balance").status_code == 200
    assert run(session, sim, "sim-search", "/search").status_code == 200
    assert sim.count("GET /v1/credits/balance") == 3
    assert sim.count("get /v1/credits/balance") == 3
    assert sim.count("POST /v1/run") == 1
    assert sim.count("/v1/run") == 1
    assert sim.count("GET /v1/run") == 0
    assert sim.count() == 4
    sim.reset_counts()
    assert sim.count() == 0
    assert sim.requests == []
    assert len(sim.charges) == 1


def test_requests_are_recorded(sim: ProviderSimulator, session: requests.Session) -> None:
    """Each request is recorded with method, path, query, headers, body and arrival time."""
    before = time.monotonic()
    post(session, sim, "/v1/run?trace=1", json={"api": "sim-search", "path": "/search"})
    (recorded,) = sim.requests
    assert isinstance(recorded, RecordedRequest)
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/run", "trace=1")
    assert recorded.route == "POST /v1/run"
    assert recorded.headers["Authorization"] == "Bearer sim-test-key"
    assert recorded.json() == {"api": "sim-search", "path": "/search"}
    assert before <= recorded.time <= time.monotonic()
    assert "sim-test-key" not in repr(recorded)
    assert "sim-test-key" not in repr(sim)


def test_concurrent_runs_never_overspend() -> None:
    """20 threads paying at once against a balance for 7 calls: exactly 7 succeed."""
    statuses: list[int] = []
    with ProviderSimulator(orthogonal_usd="0.70") as sim:
        barrier = threading.Barrier(20)

        def pay() -> None:
            barrier.wait(timeout=TIMEOUT)
            with requests.Session() as session:
                response = session.post(
                    sim.url + "/v1/run",
                    json={"api": "sim-enrich", "path": "/enrich"},
                    headers=AUTH,
                    timeout=TIMEOUT,
                )
                statuses.append(response.status_code)

        threads = [threading.Thread(target=pay) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        assert sorted(statuses) == [200] * 7 + [402] * 13
        assert sim.orthogonal_balance == Decimal(0)
        assert len(sim.charges) == 7
        assert all(charge.balance_after >= 0 for charge in sim.charges)


# -- lifecycle -----------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(sim: ProviderSimulator) -> None:
    """HTTP/1.1 keep-alive: one connection carries several requests."""
    connection = HTTPConnection(sim.host, sim.port, timeout=TIMEOUT)
    try:
        for _ in range(3):
            connection.request("GET", "/v1/credits/balance", headers=AUTH)
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == b'{"balance":"$5.00"}'
            assert not response.will_close
    finally:
        connection.close()


def test_stop_frees_the_port_and_is_idempotent() -> None:
    """stop() returns promptly with a client connection open, frees the port, and can repeat."""
    sim = ProviderSimulator().start()
    port = sim.port
    with requests.Session() as session:
        assert session.get(sim.url + "/v1/credits/balance", headers=AUTH, timeout=TIMEOUT).ok
        started = time.monotonic()
        sim.stop()
        sim.stop()
        assert time.monotonic() - started < 2.0
        assert not sim.running
        with pytest.raises(requests.ConnectionError):
            session.get(sim.url + "/v1/credits/balance", headers=AUTH, timeout=TIMEOUT)
    with ProviderSimulator(port=port) as again:
        assert again.port == port
        with requests.get(again.url + "/v1/credits/balance", headers=AUTH, timeout=TIMEOUT) as r:
            assert r.status_code == 200


def test_stop_cuts_a_request_in_flight() -> None:
    """stop() does not wait for a slowed request; its client sees the connection drop."""
    errors: list[BaseException] = []
    with ProviderSimulator() as sim:
        sim.slow("*", 30.0)
        url = sim.url + "/v1/credits/balance"

        def call() -> None:
            try:
                requests.get(url, headers=AUTH, timeout=TIMEOUT).close()
            except requests.RequestException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + TIMEOUT
        while sim.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
    caller.join(timeout=TIMEOUT)
    assert time.monotonic() - started < 2.0
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)


def test_context_manager_starts_and_stops() -> None:
    """The with block starts the server and stops it on exit."""
    simulator = ProviderSimulator(orthogonal_usd="2.50")
    with pytest.raises(RuntimeError):
        _ = simulator.url
    with simulator as sim:
        assert sim is simulator
        assert sim.running
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        with requests.get(sim.url + "/v1/credits/balance", headers=AUTH, timeout=TIMEOUT) as r:
            assert r.json() == {"balance": "$2.50"}
        with pytest.raises(RuntimeError, match="already running"):
            sim.start()
    assert not simulator.running


def test_ipv6_loopback() -> None:
    """An IPv6 host is served and bracketed in the URL."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with ProviderSimulator(host="::1") as sim:
        assert sim.url == f"http://[::1]:{sim.port}"
        with requests.get(sim.url + "/api/v2/check_balance", headers=AUTH, timeout=TIMEOUT) as r:
            assert r.status_code == 201
