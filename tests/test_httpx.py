"""Guarded httpx clients: GuardedTransport and AsyncGuardedTransport over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from hypothesis import example, given

import spendguard as sg
from spendguard.httpx import AsyncGuardedTransport, GuardedTransport
from spendguard.pricing import UnknownPrice
from spendguard.testing import ProviderSimulator
from tests.hostile import HostileServer
from tests.test_fuzz_wire import FUZZ, KEY, SESSION_ANSWERS, TIMEOUT, Answer, assert_scrubbed, logs

RODIN = "POST /api/v2/rodin"
RUN = "POST /v1/run"
H3D_BALANCE = "GET /api/v2/check_balance"
ZERO = Decimal(0)


@pytest.fixture
def rodin_guard(sim: ProviderSimulator) -> Iterator[sg.SpendGuard]:
    """A guard on the simulator's Hyper3D account (10 credits), trusting a balance for 60 s."""
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2.0) as provider:
        yield sg.SpendGuard(provider, ttl=60)


@pytest.fixture
def orth_guard(sim: ProviderSimulator) -> Iterator[sg.SpendGuard]:
    """A guard on the simulator's Orthogonal account ($5.00), trusting a balance for 60 s."""
    with sg.Orthogonal(sim.api_key, base_url=sim.url, timeout=2.0) as provider:
        yield sg.SpendGuard(provider, ttl=60)


@pytest.fixture
def client(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> Iterator[httpx.Client]:
    """A guarded sync client for the Hyper3D guard, sending the simulator's key."""
    auth = {"Authorization": f"Bearer {sim.api_key}"}
    with rodin_guard.httpx_client(base_url=sim.url, headers=auth) as http:
        yield http


def _auth(sim: ProviderSimulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.api_key}"}


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- sync ------------------------------------------------------------------------------------


def test_refused_request_never_reaches_server(sim: ProviderSimulator, client: httpx.Client) -> None:
    """A Rodin request the balance cannot pay raises InsufficientCredits and is never sent."""
    sim.hyper3d_balance = "0.4"
    with pytest.raises(sg.InsufficientCredits, match=r"need 0\.5 credits, 0\.4 available"):
        client.post("/api/v2/rodin", data={"prompt": "a chair"})
    assert sim.count(RODIN) == 0


def test_multipart_request_charged_once(
    sim: ProviderSimulator, client: httpx.Client, rodin_guard: sg.SpendGuard
) -> None:
    """A multipart form with an image is priced from its fields, sent once and settled."""
    response = client.post(
        "/api/v2/rodin",
        data={"tier": "Regular", "addons": "HighPack"},
        files={"images": ("chair.png", b"\x89PNG\r\n", "image/png")},
    )
    assert response.status_code == 201
    assert [c.amount for c in sim.charges] == [Decimal("1.5")]
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("1.5"), ZERO)


def test_free_requests_pass_through(
    sim: ProviderSimulator, client: httpx.Client, rodin_guard: sg.SpendGuard
) -> None:
    """A free route is sent untouched and looks nothing up."""
    assert client.get("/api/v2/check_balance").is_success
    assert sim.count(H3D_BALANCE) == 1
    assert rodin_guard.stats.decisions == 0


def test_402_becomes_insufficient_credits(
    sim: ProviderSimulator, client: httpx.Client, rodin_guard: sg.SpendGuard
) -> None:
    """A 402 raises InsufficientCredits quoting the provider, drops the cache, charges nothing."""
    rodin_guard.balance()
    sim.hyper3d_balance = "0.2"
    with pytest.raises(sg.InsufficientCredits, match=r"HTTP 402: Insufficient credits") as info:
        client.post("/api/v2/rodin", data={"tier": "Regular"})
    assert info.value.available == Decimal("0.2")
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_read_timeout_stays_counted(
    sim: ProviderSimulator, client: httpx.Client, rodin_guard: sg.SpendGuard
) -> None:
    """A read timeout keeps the cost counted, and the request is not retried."""
    sim.slow(RODIN, 1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/v2/rodin", data={"tier": "Regular"}, timeout=0.2)
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("0.5"), ZERO)


def test_connection_refused_releases(rodin_guard: sg.SpendGuard) -> None:
    """When no connection can be opened nothing was sent: the hold is given back."""
    with rodin_guard.httpx_client() as http, pytest.raises(httpx.ConnectError):
        http.post(f"{_closed_port_url()}/api/v2/rodin", data={"tier": "Regular"})
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_streamed_body_is_unknown_price(
    sim: ProviderSimulator, client: httpx.Client, rodin_guard: sg.SpendGuard
) -> None:
    """A billable body streamed from a generator cannot be priced and is never sent."""
    with pytest.raises(UnknownPrice, match="streamed"):
        client.post("/api/v2/rodin", content=iter([b"tier=Regular"]))
    assert sim.count(RODIN) == 0
    assert rodin_guard.held == 0


def test_mounted_transport_and_own_prices(
    sim: ProviderSimulator, rodin_guard: sg.SpendGuard
) -> None:
    """In mounts=, with prices= of its own, the transport prices its routes and wraps another."""
    inner = httpx.HTTPTransport()
    guarded = GuardedTransport(rodin_guard, inner, prices={"GET /api/v2/check_balance": "2"})
    with httpx.Client(mounts={sim.url: guarded}, headers=_auth(sim)) as http:
        http.get(f"{sim.url}/api/v2/check_balance")
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal(2), ZERO)
    assert "check_balance" in repr(guarded)


def test_twenty_threads_seven_charges(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """20 threads on one sync client against a balance for 7 charges make exactly 7."""
    sim.hyper3d_balance = "3.5"
    refused: list[BaseException] = []
    barrier = threading.Barrier(20)
    sim.slow(RODIN, 0.05, times=20)
    with rodin_guard.httpx_client(base_url=sim.url, headers=_auth(sim)) as http:

        def worker() -> None:
            barrier.wait()
            try:
                http.post("/api/v2/rodin", data={"tier": "Regular"})
            except sg.InsufficientCredits as exc:
                refused.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(sim.charges) == 7
    assert len(refused) == 13
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("3.5"), ZERO)


# -- async -----------------------------------------------------------------------------------


def test_async_refused_and_charged(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """The async client sends what the balance pays for and never sends the rest."""
    sim.hyper3d_balance = "0.5"

    async def main() -> None:
        async with rodin_guard.async_httpx_client(base_url=sim.url, headers=_auth(sim)) as http:
            assert (await http.post("/api/v2/rodin", data={"tier": "Sketch"})).status_code == 201
            with pytest.raises(sg.InsufficientCredits):
                await http.post("/api/v2/rodin", data={"tier": "Sketch"})

    asyncio.run(main())
    assert sim.count(RODIN) == 1
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("0.5"), ZERO)


def test_async_two_hundred_tasks_seven_charges(
    sim: ProviderSimulator, rodin_guard: sg.SpendGuard
) -> None:
    """200 tasks on one async client against a balance for 7 charges make exactly 7."""
    sim.hyper3d_balance = "3.5"

    async def main() -> list[BaseException | httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        transport = AsyncGuardedTransport(rodin_guard, httpx.AsyncHTTPTransport(limits=limits))
        async with httpx.AsyncClient(transport=transport, headers=_auth(sim)) as http:
            calls = [
                http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Regular"}, timeout=10)
                for _ in range(200)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, sg.InsufficientCredits) for r in results) == 193
    assert len(sim.charges) == 7
    assert (rodin_guard.spent, rodin_guard.held) == (Decimal("3.5"), ZERO)


def test_async_orthogonal_settles_at_answer_price(
    sim: ProviderSimulator, orth_guard: sg.SpendGuard
) -> None:
    """A dynamic /v1/run holds max_cost and settles at the price its answer states."""
    sim.orthogonal_dynamic_price = "0.07"

    async def main() -> int:
        async with orth_guard.async_httpx_client(max_cost="0.20", headers=_auth(sim)) as http:
            body = {"api": "sim-dynamic", "path": "/run"}
            return (await http.post(f"{sim.url}/v1/run", json=body)).status_code

    assert asyncio.run(main()) == 200
    assert (orth_guard.spent, orth_guard.held) == (Decimal("0.07"), ZERO)


def test_async_402_and_connect_error(sim: ProviderSimulator, rodin_guard: sg.SpendGuard) -> None:
    """On the async client a 402 raises InsufficientCredits and a refused connection
    releases: neither leaves anything held or spent."""
    rodin_guard.balance()
    sim.hyper3d_balance = "0.2"

    async def main() -> None:
        async with rodin_guard.async_httpx_client(headers=_auth(sim)) as http:
            with pytest.raises(sg.InsufficientCredits, match="HTTP 402"):
                await http.post(f"{sim.url}/api/v2/rodin", data={"tier": "Regular"})
            sim.hyper3d_balance = "10"
            rodin_guard.invalidate()
            with pytest.raises(httpx.ConnectError):
                await http.post(f"{_closed_port_url()}/api/v2/rodin", data={"tier": "Regular"})

    asyncio.run(main())
    assert (rodin_guard.spent, rodin_guard.held) == (ZERO, ZERO)


def test_async_lookups_never_block_the_loop(
    sim: ProviderSimulator, orth_guard: sg.SpendGuard
) -> None:
    """A slow balance lookup and a slow /v1/details run off the loop: a ticker keeps ticking."""
    sim.slow("POST /v1/details", 0.4)
    sim.slow("GET /v1/credits/balance", 0.4)
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        async with orth_guard.async_httpx_client(headers=_auth(sim)) as http:
            body = {"api": "sim-search", "path": "/search"}
            assert (await http.post(f"{sim.url}/v1/run", json=body)).status_code == 200
        stop.set()
        await tick

    asyncio.run(main())
    assert max(gaps) < 0.2
    assert orth_guard.spent == Decimal("0.01")


def test_async_cancelled_at_every_await_holds_nothing(
    sim: ProviderSimulator, orth_guard: sg.SpendGuard
) -> None:
    """A request cancelled after any number of loop steps leaves nothing held."""
    sim.orthogonal_balance = "1000"

    async def main() -> int:
        async with orth_guard.async_httpx_client(headers=_auth(sim)) as http:
            for steps in range(1000):
                orth_guard.invalidate()
                body = {"api": "sim-search", "path": "/search"}
                task = asyncio.create_task(http.post(f"{sim.url}/v1/run", json=body))
                for _ in range(steps):
                    await asyncio.sleep(0)
                if task.done():
                    await task
                    return steps
                task.cancel()
                # The HTTP stack may still finish a request whose answer had arrived (seen
                # with Python 3.10): either way nothing may stay held.
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert orth_guard.held == 0, steps
        raise AssertionError("the request never finished")

    steps = asyncio.run(main())
    assert steps > 3
    assert orth_guard.held == 0


# -- hostile answers, as for the Session -----------------------------------------------------


def _paid_request(guard: sg.SpendGuard, url: str, reply: Answer, use_async: bool) -> None:
    """Send the guard's billable request to the hostile server and check what comes back."""
    caught: BaseException | None = None
    spent_before = guard.spent
    auth = {"Authorization": f"Bearer {KEY}"}
    if isinstance(guard.provider, sg.Orthogonal):
        path, form = "/v1/run", {"json": {"api": "sim-search", "path": "/search"}}
    else:
        path, form = "/api/v2/rodin", {"data": {"prompt": "a chair"}}

    async def send_async() -> httpx.Response:
        async with guard.async_httpx_client(headers=auth, timeout=TIMEOUT) as http:
            return await http.post(url + path, **form)  # type: ignore[arg-type]

    with logs() as lines:
        try:
            if use_async:
                response = asyncio.run(send_async())
            else:
                with guard.httpx_client(headers=auth, timeout=TIMEOUT) as http:
                    response = http.post(url + path, **form)  # type: ignore[arg-type]
        except (httpx.HTTPError, sg.InsufficientCredits) as exc:
            caught = exc
        else:
            assert response.status_code != 402
            if 200 <= response.status_code < 300 and isinstance(guard.provider, sg.Hyper3D):
                assert guard.spent == spent_before + Decimal("0.5")
    assert guard.held == 0
    assert guard.spent >= spent_before
    if isinstance(caught, sg.InsufficientCredits):
        assert caught.available is not None
    if caught is not None:
        # The caller's frames (this file's and httpx's client) hold the key it sent.
        tb = caught.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_name.startswith("handle_"):
            tb = tb.tb_next
        caught.__traceback__ = tb
        if tb is None:
            # Raised by httpx itself while the caller read a body the transport returned
            # untouched: its causes' frames hold that body, echoed key and all. Only the
            # text is checked, as for any error the guard never saw.
            caught.__cause__ = caught.__context__ = None
    assert_scrubbed(caught, lines)


@FUZZ
@given(reply=SESSION_ANSWERS)
# A body httpx cannot decode, echoing the key: httpx's own error, raised as the caller reads.
@example(reply=Answer(200, (("Content-Encoding", "gzip"),), b"%s" % KEY.encode(), "length", "now"))
def test_guarded_transports_meet_any_answer(reply: Answer) -> None:
    """A guarded Rodin or /v1/run request on either transport: a response or a documented
    error, holds ended, no key shown."""
    with (
        ProviderSimulator(api_key=KEY) as sim,
        HostileServer(lambda _request: reply.steps()) as server,
        sg.Hyper3D(KEY, base_url=sim.url, timeout=2.0) as rodin,
        sg.Orthogonal(KEY, base_url=sim.url, timeout=2.0) as orthogonal,
    ):
        for provider in (rodin, orthogonal):
            for use_async in (False, True):
                _paid_request(sg.SpendGuard(provider), server.url, reply, use_async)


# -- the extra -------------------------------------------------------------------------------


def test_missing_extra_names_the_install(
    monkeypatch: pytest.MonkeyPatch, rodin_guard: sg.SpendGuard
) -> None:
    """Without httpx, the shorthand raises an ImportError naming the pip install."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "spendguard.httpx")
    with pytest.raises(ImportError, match=r"pip install 'spendguard-preflight\[httpx\]'"):
        rodin_guard.async_httpx_client()
