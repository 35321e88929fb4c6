"""The Redis ledger against a real redis-server: atomic admission, one lookup per TTL for
a fleet, crashed workers, restarts, and the failure policies.

Skipped when redis-server or the redis package is missing (with how to install them),
unless SPENDGUARD_REQUIRE_REDIS=1, which makes that an error (CI sets it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import requests

import spendguard as sg
from spendguard._redis_server import free_port
from spendguard.testing import ProviderSimulator, RedisServer
from tests.redis_server import (
    REDIS_SERVER,
    hold_long,
    kill,
    spend_once,
    spend_worker,
)

REQUIRED = os.environ.get("SPENDGUARD_REQUIRE_REDIS") == "1"
INSTALL = (
    "to run these tests: `apt-get install redis-server` (or your system's package) and "
    "`pip install 'spendguard-preflight[redis]'`"
)

try:
    import redis

    from spendguard.redis import MAX_AMOUNT, SCALE, RedisLedger
except ImportError:
    if REQUIRED:
        raise
    pytest.skip(f"the redis package is missing; {INSTALL}", allow_module_level=True)
if REDIS_SERVER is None:
    if REQUIRED:
        pytest.fail(f"redis-server is not on PATH; {INSTALL}", pytrace=False)
    pytest.skip(f"redis-server is not on PATH; {INSTALL}", allow_module_level=True)

H3D_BALANCE = "GET /api/v2/check_balance"
BEAT = 0.05
"""The tests' heartbeat: an account's first admission waits three beats, not three seconds."""
SLOW_BEAT = 0.25
"""Where the test is a live holder's heartbeat racing a new process through a recovery: room
for a busy machine's scheduling."""


def _open(url: str, **options: Any) -> RedisLedger:
    """``RedisLedger.from_url`` with the tests' heartbeat."""
    options.setdefault("heartbeat", BEAT)
    return RedisLedger.from_url(url, **options)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One redis-server for the module, on a free loopback port."""
    with RedisServer() as running:
        yield running


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    """The module's server, emptied before each test."""
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
        client.config_resetstat()
    return server.url


@pytest.fixture
def ledger(redis_url: str) -> Iterator[RedisLedger]:
    """A RedisLedger on the emptied server."""
    with _open(redis_url, max_hold_ttl=5.0) as opened:
        yield opened


def _state(ledger: RedisLedger, provider: sg.Provider) -> dict[str, str]:
    raw = ledger.client.hgetall(ledger.keys(provider.account_id)[0])
    return {k.decode(): v.decode() for k, v in raw.items()}


def _held(ledger: RedisLedger, provider: sg.Provider) -> Decimal:
    return Decimal(_state(ledger, provider).get("held", "0")) * SCALE


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _generate(http: requests.Session, sim: ProviderSimulator) -> int:
    response = http.post(
        f"{sim.url}/api/v2/rodin",
        data={"prompt": "a chair", "tier": "Regular"},
        headers={"Authorization": f"Bearer {sim.api_key}"},
        timeout=5,
    )
    return response.status_code


# -- the basics ----------------------------------------------------------------------------


def test_guard_on_a_redis_ledger_holds_settles_and_refuses(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """A spend holds in Redis, settles into spending, and a call that does not fit is refused."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    with guard.spend(4) as hold:
        assert _held(ledger, hyper3d) == 4
        assert guard.available() == 6
    assert hold.state == "settled"
    assert _held(ledger, hyper3d) == 0
    assert guard.balance() == 6
    with pytest.raises(sg.InsufficientCredits) as refused:
        guard.require(7)
    assert refused.value.available == 6
    assert guard.spent == 4
    assert guard.held == 0
    assert sim.count(H3D_BALANCE) == 1


def test_two_processes_worth_of_guards_share_holds(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """Guards on separate ledgers (separate connections) see each other's holds."""
    with (
        _open(redis_url) as first,
        _open(redis_url) as second,
    ):
        a = sg.SpendGuard(hyper3d, ledger=first)
        b = sg.SpendGuard(hyper3d, ledger=second)
        with a.spend(8):
            assert not b.check(3).sufficient
            assert b.check(2).sufficient
    assert sim.count(H3D_BALANCE) == 1


def test_budget_and_floor_stay_with_each_guard(hyper3d: sg.Hyper3D, ledger: RedisLedger) -> None:
    """One guard's budget and another's floor do not change what a third may spend."""
    capped = sg.SpendGuard(hyper3d, budget=1, ledger=ledger)
    careful = sg.SpendGuard(hyper3d, floor=8, ledger=ledger)
    plain = sg.SpendGuard(hyper3d, ledger=ledger)
    with pytest.raises(sg.InsufficientCredits, match="budget"):
        capped.require(2)
    assert not careful.check(3).sufficient
    assert careful.check(2).sufficient
    assert plain.check(10).sufficient


def test_decorated_call_settles_in_redis(hyper3d: sg.Hyper3D, ledger: RedisLedger) -> None:
    """A decorated function's hold is ended in Redis when it returns or raises."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)

    @guard(cost="2.5")
    def generate(fail: bool) -> str:
        assert _held(ledger, hyper3d) == Decimal("2.5")
        if fail:
            raise RuntimeError("boom")
        return "ok"

    assert generate(False) == "ok"
    with pytest.raises(RuntimeError):
        generate(True)
    assert _held(ledger, hyper3d) == 0
    assert guard.balance() == 5


def test_release_and_partial_settle_reach_redis(hyper3d: sg.Hyper3D, ledger: RedisLedger) -> None:
    """release() gives the hold back; settle(actual) records only what was charged."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    with guard.spend(3) as hold:
        hold.release()
        hold.settle()  # no effect: only the first ending counts
    with guard.spend(3) as hold:
        hold.settle("1.25")
    assert _held(ledger, hyper3d) == 0
    assert guard.balance() == Decimal("8.75")


def test_batch_holds_its_total_in_redis_until_it_ends(
    hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """A batch holds its total in Redis; when it ends, Redis records what its items spent
    and gives back the rest."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    batch = guard.batch(range(6), lambda i: 1)
    assert _held(ledger, hyper3d) == 6
    for i in batch:
        if i == 3:
            break
    batch.close()
    assert _held(ledger, hyper3d) == 0
    assert guard.balance() == 6  # items 0-3 spent 4
    assert guard.held == 0


def test_amount_finer_than_the_scale_is_held_rounded_up(
    hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """A cost finer than 10^-6 of the unit is held in Redis rounded up, and ends exactly."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    with guard.spend(Decimal("0.0000001")) as hold:
        assert _held(ledger, hyper3d) == SCALE
        hold.settle(Decimal("0.0000012"))
    assert _held(ledger, hyper3d) == 0
    assert Decimal(_state(ledger, hyper3d)["spent"]) * SCALE == Decimal("0.000002")
    assert guard.check(Decimal("9.999998")).sufficient
    assert not guard.check(Decimal("9.9999981")).sufficient


def test_ledger_is_a_ledger_and_its_repr_hides_the_password(redis_url: str) -> None:
    """RedisLedger satisfies sg.Ledger; neither its repr nor its errors show a password."""
    url = redis_url.replace("redis://", "redis://someone:s3cret-pw@")
    with _open(url) as ledger:
        assert isinstance(ledger, sg.Ledger)
        assert "s3cret" not in repr(ledger)
        with pytest.raises(sg.LedgerError) as failed:
            ledger.invalidate("acct")
    assert "s3cret" not in str(failed.value)
    assert failed.value.ledger == redis_url
    copy = pickle.loads(pickle.dumps(failed.value))
    assert (copy.message, copy.ledger) == (failed.value.message, failed.value.ledger)


def test_missing_redis_package_names_the_extra() -> None:
    """Without the redis package, importing spendguard.redis says what to pip install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import spendguard.redis\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'spendguard-preflight[redis]'" in out.stdout


# -- atomicity and single-flight -----------------------------------------------------------


def test_16_threads_on_16_connections_never_over_admit(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """16 threads, each with its own ledger and guard, spend 1 at a time from 10: exactly
    10 are admitted and concurrent holds never exceed the balance."""
    ledgers = [_open(redis_url) for _ in range(16)]
    guards = [sg.SpendGuard(hyper3d, ledger=one) for one in ledgers]
    barrier = threading.Barrier(16)
    lock = threading.Lock()
    admitted: list[int] = []
    peak = [Decimal(0)]

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(4):
            try:
                with guards[i].spend(1):
                    with lock:
                        admitted.append(i)
                        peak[0] = max(peak[0], _held(ledgers[i], hyper3d))
                    time.sleep(0.005)
            except sg.InsufficientCredits:
                pass

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(16)))
    assert len(admitted) == 10
    assert peak[0] <= 10
    assert _held(ledgers[0], hyper3d) == 0
    assert Decimal(_state(ledgers[0], hyper3d)["spent"]) * SCALE == 10
    assert sim.count(H3D_BALANCE) == 1
    for one in ledgers:
        one.close()


def test_fleet_makes_one_lookup_per_ttl(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """8 guards on 8 connections checking for a second with ttl=0.2 make at most one slow
    lookup per TTL window between them."""
    ledgers = [_open(redis_url) for _ in range(8)]
    guards = [sg.SpendGuard(hyper3d, ttl=0.2, ledger=one) for one in ledgers]
    sim.slow(H3D_BALANCE, 0.05, times=100)
    start = time.monotonic()

    def work(guard: sg.SpendGuard) -> int:
        checks = 0
        while time.monotonic() - start < 1.0:
            assert guard.check("0.1").sufficient
            checks += 1
        return checks

    with ThreadPoolExecutor(8) as pool:
        checks = sum(pool.map(work, guards))
    elapsed = time.monotonic() - start
    assert checks > 100
    assert 2 <= sim.count(H3D_BALANCE) <= elapsed / 0.2 + 1
    for one in ledgers:
        one.close()


def test_one_evalsha_per_admission(hyper3d: sg.Hyper3D, ledger: RedisLedger) -> None:
    """With a fresh snapshot a check is one EVALSHA and a spend two (admit, settle); MONITOR
    sees no other command from the client."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    guard.check(1)  # loads the script and the snapshot
    client = ledger.client
    client.config_resetstat()
    sent: list[str] = []
    with client.monitor() as monitor:

        def watch() -> None:
            for command in monitor.listen():
                if command["client_type"] != "lua":
                    sent.append(command["command"].split(" ", 1)[0].upper())
                    if sent[-1] == "ECHO":
                        return

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.05)
        for _ in range(10):
            guard.check(1)
        assert _evalsha_calls(client) == 10
        for _ in range(10):
            with guard.spend("0.5"):
                pass
        assert _evalsha_calls(client) == 30
        client.echo("done")
        watcher.join(5)
    handshake = {"HELLO", "CLIENT", "SELECT"}  # a new pooled connection introduces itself
    assert set(sent) - handshake - {"INFO", "ECHO"} == {"EVALSHA"}
    assert sent.count("EVALSHA") == 30


def test_script_reloaded_after_script_flush(hyper3d: sg.Hyper3D, ledger: RedisLedger) -> None:
    """A flushed script cache (NOSCRIPT) is loaded again and the call goes through."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    assert guard.check(1).sufficient
    ledger.client.script_flush()
    assert guard.check(1).sufficient


def test_spending_during_a_lookup_is_not_lost(redis_url: str) -> None:
    """A settle that lands while another process's lookup is in flight still counts once
    the new snapshot is stored."""
    wallet = _Wallet(Decimal(10), "wallet:during-lookup")
    with _open(redis_url) as first, _open(redis_url) as second:
        looker = sg.SpendGuard(wallet, ledger=first)
        spender = sg.SpendGuard(wallet, ledger=second)
        hold = spender.spend(2).__enter__()  # the first lookup: a snapshot of 10
        looker.invalidate()
        wallet.pause = threading.Event()
        wallet.reading = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(looker.check, 1)
            assert wallet.reading.wait(5)  # the lookup has read 10
            hold.settle()  # the provider is charged after the read; spent += 2
            wallet.balance -= 2
            wallet.pause.set()
            assert pending.result().sufficient
        assert looker.available() == 8


def test_failed_lookup_is_shared_by_the_fleet(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """When the one lookup fails, the processes that waited for it get its error too."""
    ledgers = [_open(redis_url) for _ in range(8)]
    guards = [sg.SpendGuard(hyper3d, ledger=one) for one in ledgers]
    sim.fail(H3D_BALANCE, status=503, delay=0.2, times=5)
    barrier = threading.Barrier(8)

    def work(guard: sg.SpendGuard) -> object:
        barrier.wait()
        try:
            return guard.check(1)
        except sg.SpendGuardError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, guards))
    assert all(isinstance(r, sg.BalanceUnavailable) for r in results)
    assert sim.count(H3D_BALANCE) <= 3  # one lookup, and the client's own retries
    for one in ledgers:
        one.close()


# -- processes -----------------------------------------------------------------------------


def test_four_processes_spend_exactly_the_balance(sim: ProviderSimulator, redis_url: str) -> None:
    """4 processes x 50 guarded generations (0.5 each) against 30 credits: exactly 60 run,
    the balance never goes negative, and at most one lookup per TTL window is made."""
    sim.hyper3d_balance = 30
    ttl = 30.0
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=spend_worker,
            kwargs={
                "redis_url": redis_url,
                "sim_url": sim.url,
                "api_key": sim.api_key,
                "calls": 50,
                "ttl": ttl,
                "start": start,
                "results": results,
            },
        )
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    results.close()
    results.join_thread()
    assert sum(admitted for admitted, _, _ in outcomes) == 60
    assert sum(refused for _, refused, _ in outcomes) == 140
    assert len(sim.charges) == 60
    assert min(charge.balance_after for charge in sim.charges) >= 0
    assert sim.hyper3d_balance == 0
    assert sim.count(H3D_BALANCE) <= elapsed / ttl + 1
    assert sum(lookups for _, _, lookups in outcomes) == sim.count(H3D_BALANCE)


def test_long_call_keeps_its_hold_and_a_killed_one_frees_it_after_expiry(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger, redis_url: str
) -> None:
    """A process holding 1 of 1 for 1.5 x max_hold_ttl keeps it (another process is refused
    throughout); after kill -9 its hold is freed once max_hold_ttl has passed, not before."""
    sim.hyper3d_balance = 1
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    worker = ctx.Process(
        target=hold_long,
        args=(redis_url, sim.url, sim.api_key, "1", held),
        kwargs={"release": release, "max_hold_ttl": 1.0},
    )
    worker.start()
    try:
        assert held.wait(30)
        guard = sg.SpendGuard(hyper3d, ttl=0.1, refresh_interval=0.1, ledger=ledger)
        since = time.monotonic()
        while time.monotonic() - since < 1.5:
            assert not guard.check(1).sufficient
            time.sleep(0.05)
        kill(worker.pid or 0)
        worker.join(10)
        killed = time.monotonic()
        while not guard.check(1).sufficient:
            assert time.monotonic() - killed < 5
            time.sleep(0.02)
        assert time.monotonic() - killed >= 1.0 - 2 * BEAT
        with guard.spend(1):
            pass
    finally:
        worker.kill()
        worker.join(10)
    assert _held(ledger, hyper3d) == 0


def test_decorated_call_longer_than_max_hold_ttl_keeps_its_hold(
    hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """A decorated call with hold_ttl=None running 2.5 x max_hold_ttl holds its cost in Redis
    the whole time; another ledger's guard is refused until it returns."""
    with _open(redis_url, max_hold_ttl=0.8) as mine, _open(redis_url) as theirs:
        guard = sg.SpendGuard(hyper3d, hold_ttl=None, ledger=mine)
        other = sg.SpendGuard(hyper3d, ttl=0.1, refresh_interval=0.1, ledger=theirs)
        refusals: list[bool] = []

        @guard(cost=8)
        def generate() -> None:
            started = time.monotonic()
            while time.monotonic() - started < 2.0:
                refusals.append(not other.check(3).sufficient)
                time.sleep(0.05)

        generate()
        assert len(refusals) > 20
        assert all(refusals)
        assert _held(mine, hyper3d) == 0
        assert mine.open_holds() == {}
        assert Decimal(_state(mine, hyper3d)["spent"]) * SCALE == 8


def test_state_loss_a_process_started_after_it_is_refused_while_a_hold_lives(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger, redis_url: str
) -> None:
    """Process A holds 10 of 10; Redis loses every key; process B, started after the loss,
    asks for 10 and is refused (A re-announced its hold in time); once A ends, a new
    process is admitted."""
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    results: Any = ctx.Queue()
    holder = ctx.Process(
        target=hold_long,
        args=(redis_url, sim.url, sim.api_key, "10", held),
        kwargs={"release": release, "max_hold_ttl": 2.0, "heartbeat": SLOW_BEAT},
    )
    holder.start()
    try:
        assert held.wait(30)
        ledger.client.flushall()
        late = ctx.Process(
            target=spend_once,
            args=(redis_url, sim.url, sim.api_key, "10", results),
            kwargs={"heartbeat": SLOW_BEAT},
        )
        late.start()
        assert results.get(timeout=30) == "refused"
        late.join(10)
        assert _held(ledger, hyper3d) == 10  # re-announced by A
        release.set()
        holder.join(10)
        assert holder.exitcode == 0
        after = ctx.Process(
            target=spend_once,
            args=(redis_url, sim.url, sim.api_key, "10", results),
            kwargs={"heartbeat": SLOW_BEAT},
        )
        after.start()
        assert results.get(timeout=30) == "admitted"
        after.join(10)
    finally:
        holder.kill()
        holder.join(10)
    assert _held(ledger, hyper3d) == 0


def test_state_loss_waits_for_re_announced_holds_in_process(
    hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """After a flush, a ledger that never saw the old state waits the recovery window,
    sees the live holder's re-announced hold, and refuses what it would overspend."""
    with (
        _open(redis_url, heartbeat=SLOW_BEAT) as first,
        _open(redis_url, heartbeat=SLOW_BEAT) as fresh,
    ):
        holder = sg.SpendGuard(hyper3d, hold_ttl=None, ledger=first)
        with holder.spend(7) as hold:
            first.client.flushall()
            started = time.monotonic()
            late = sg.SpendGuard(hyper3d, ledger=fresh)
            assert not late.check(4).sufficient
            assert time.monotonic() - started >= fresh.recovery * 0.9
            assert late.check(3).sufficient
            hold.release()
        assert late.check(10).sufficient


def test_one_round_trip_per_heartbeat_renews_every_open_hold(redis_url: str) -> None:
    """20 open holds on two accounts are renewed by one EVALSHA per heartbeat, not one per
    hold; ended holds are no longer renewed."""
    with _open(redis_url, max_hold_ttl=1.0, heartbeat=0.1) as ledger:
        ids = [
            ledger.hold(account, Decimal(1), hold_ttl=math.inf).hold_id
            for account in ("wallet:a", "wallet:b")
            for _ in range(10)
        ]
        assert len(ledger.open_holds()) == 20
        ledger.client.config_resetstat()
        time.sleep(1.05)
        beats = _evalsha_calls(ledger.client)
        assert 5 <= beats <= 12
        for hold_id in ids:
            ledger.end("wallet:a" if hold_id in ids[:10] else "wallet:b", hold_id, None)
        assert ledger.open_holds() == {}
        ledger.client.config_resetstat()
        time.sleep(0.35)
        assert _evalsha_calls(ledger.client) == 0


def test_a_recovery_longer_than_lock_timeout_raises_with_retry_after(redis_url: str) -> None:
    """When the recovery window outlasts lock_timeout, an admission raises LedgerError with
    retry_after instead of waiting; a heartbeat above half of max_hold_ttl is refused."""
    with _open(redis_url, heartbeat=1.0, lock_timeout=0.5) as ledger:
        guard = sg.SpendGuard(_Wallet(Decimal(5), "wallet:slow-recovery"), ledger=ledger)
        with pytest.raises(sg.LedgerError) as paused:
            guard.check(1)
    assert paused.value.retry_after is not None
    assert 2.5 < paused.value.retry_after <= 3.0
    with pytest.raises(sg.ConfigurationError, match="heartbeat"):
        RedisLedger.from_url(redis_url, max_hold_ttl=1.0, heartbeat=0.6)


# -- the range -----------------------------------------------------------------------------


def test_balances_of_many_millions_count_exactly(ledger: RedisLedger) -> None:
    """A balance of 12,345,678.00001 (10^-5 dollar resolution) is counted to the last digit."""
    wallet = _Wallet(Decimal("12345678.00001"), "wallet:millions")
    guard = sg.SpendGuard(wallet, ledger=ledger)
    assert guard.check(Decimal("12345678.00001")).sufficient
    assert not guard.check(Decimal("12345678.000011")).sufficient
    with guard.spend(Decimal("12345677.5")):
        assert guard.available() == Decimal("0.50001")


def test_out_of_range_values_are_conservative(ledger: RedisLedger) -> None:
    """A balance above MAX_AMOUNT counts as MAX_AMOUNT; a cost above it is refused."""
    wallet = _Wallet(MAX_AMOUNT * 5, "wallet:beyond")
    guard = sg.SpendGuard(wallet, ledger=ledger)
    assert guard.balance() == MAX_AMOUNT
    assert guard.check(MAX_AMOUNT).sufficient
    refused = guard.check(MAX_AMOUNT + 1)
    assert not refused.sufficient
    assert refused.available == MAX_AMOUNT


def test_settle_above_the_range_ends_the_hold(ledger: RedisLedger, redis_url: str) -> None:
    """hold.settle(x) above MAX_AMOUNT ends the Redis hold and records MAX_AMOUNT spent:
    no other process is admitted anything until the next lookup."""
    wallet = _Wallet(Decimal(10), "wallet:settle-beyond")
    guard = sg.SpendGuard(wallet, ledger=ledger)
    with guard.spend(5) as hold:
        hold.settle(MAX_AMOUNT * 3)
    assert _held(ledger, wallet) == 0
    assert ledger.open_holds() == {}
    assert Decimal(_state(ledger, wallet)["spent"]) * SCALE == MAX_AMOUNT
    with _open(redis_url) as other_ledger:
        other = sg.SpendGuard(wallet, ledger=other_ledger)
        assert not other.check(Decimal("0.000001")).sufficient


# -- Redis failures ------------------------------------------------------------------------


def test_raise_policy_raises_ledger_error(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """With Redis unreachable and on_ledger_error="raise", the call does not run."""
    ran: list[int] = []
    with _open(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2) as dead:
        guard = sg.SpendGuard(hyper3d, ledger=dead)

        @guard(cost=1)
        def generate() -> None:
            ran.append(1)

        with pytest.raises(sg.LedgerError) as failed:
            generate()
        with pytest.raises(sg.LedgerError):
            guard.check(1)
    assert ran == []
    assert "redis://127.0.0.1" in str(failed.value)
    assert guard.held == 0
    assert sim.count(H3D_BALANCE) == 0


def test_local_policy_falls_back_with_a_warning(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis unreachable and on_ledger_error="local", the guard decides from its own
    process's ledger (still checking the balance) and logs a WARNING."""
    caplog.set_level(logging.WARNING, logger="spendguard")
    url = f"redis://127.0.0.1:{free_port()}/0"
    with _open(url, on_ledger_error="local", socket_timeout=0.2) as dead:
        guard = sg.SpendGuard(hyper3d, ledger=dead)
        with guard.spend(6) as hold:
            assert guard.held == 6
            with pytest.raises(sg.InsufficientCredits):
                guard.require(5)
        assert hold.state == "settled"
        assert guard.available() == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("on_ledger_error='local'" in r.getMessage() for r in warnings)
    assert sim.count(H3D_BALANCE) == 1
    assert guard.held == 0


def test_local_spending_reaches_redis_when_it_answers_again(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, redis_url: str
) -> None:
    """While Redis does not answer, "local" decides in-process; what was spent meanwhile
    is recorded in Redis with the first decision after it answers again."""
    with (
        _open(redis_url, on_ledger_error="local", socket_timeout=0.2) as ledger,
        redis.Redis.from_url(redis_url) as admin,
    ):
        guard = sg.SpendGuard(hyper3d, ledger=ledger)
        with guard.spend(2):
            pass
        admin.client_pause(1200, all=True)
        paused = time.monotonic()
        assert guard.check(1).sufficient  # times out, then decides locally
        with guard.spend(3):
            pass
        while time.monotonic() - paused < 1.3:
            time.sleep(0.05)
        assert guard.available() == 5
        assert Decimal(_state(ledger, hyper3d)["spent"]) * SCALE == 5
    assert sim.count(H3D_BALANCE) == 2  # one for Redis, one for the in-process ledger


def test_stale_policy_decides_from_the_shared_snapshot(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """on_unavailable="stale": a failed lookup falls back to the fleet's last snapshot,
    and the hold it admits is still held in Redis."""
    guard = sg.SpendGuard(hyper3d, ttl=0.05, on_unavailable="stale", ledger=ledger)
    assert guard.check(1).sufficient
    time.sleep(0.1)
    sim.fail(H3D_BALANCE, status=503, times=10)
    with guard.spend(4):
        assert _held(ledger, hyper3d) == 4
    with pytest.raises(sg.InsufficientCredits):
        guard.require(7)
    assert guard.stats.fallbacks == 2


def test_allow_policy_and_shadow_mode_still_hold_in_redis(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """A call let through by on_unavailable="allow" or by shadow mode holds its cost in
    Redis while it runs, so other processes count it."""
    shadow = sg.SpendGuard(hyper3d, enforce=False, ledger=ledger)
    with shadow.spend(12):
        assert _held(ledger, hyper3d) == 12
    assert _held(ledger, hyper3d) == 0
    ledger.invalidate(hyper3d.account_id)
    sim.fail(H3D_BALANCE, status=503, times=10)
    allowing = sg.SpendGuard(hyper3d, on_unavailable="allow", ledger=ledger)
    with allowing.spend(3):
        assert _held(ledger, hyper3d) == 3
    assert _held(ledger, hyper3d) == 0


def test_redis_restart_mid_run(sim: ProviderSimulator) -> None:
    """Redis restarted (keys lost) while 4 threads spend: calls fail with LedgerError while
    it is down, wait for the holds in flight to be re-announced, then the balance is looked
    up again. Nothing is admitted beyond the balance: every admitted call is paid, none is
    refused with 402."""
    sim.hyper3d_balance = 20
    stop = threading.Event()
    lock = threading.Lock()
    seen: dict[str, int] = {"admitted": 0, "refused": 0, "ledger": 0, "paused": 0, "402": 0}
    restarted = threading.Event()
    after_restart = [0]

    with RedisServer() as server:

        def work() -> None:
            with (
                _open(server.url, max_hold_ttl=0.5, heartbeat=0.15, socket_timeout=0.5) as ledger,
                sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=5) as provider,
                requests.Session() as http,
            ):
                guard = sg.SpendGuard(provider, ledger=ledger)
                while not stop.is_set():
                    try:
                        with guard.spend("0.5"):
                            status = _generate(http, sim)
                            time.sleep(0.05)  # the call takes a while: some are in flight
                        kind = "admitted" if status == 201 else str(status)
                    except sg.InsufficientCredits:
                        kind = "refused"
                        time.sleep(0.01)
                    except sg.LedgerError as exc:
                        kind = "paused" if exc.retry_after is not None else "ledger"
                        time.sleep(0.01)
                    with lock:
                        seen[kind] = seen.get(kind, 0) + 1
                        if kind == "admitted" and restarted.is_set():
                            after_restart[0] += 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while len(sim.charges) < 6 and time.monotonic() < deadline:
                time.sleep(0.005)
            server.stop()
            time.sleep(0.2)
            server.start()
            restarted.set()
            while len(sim.charges) < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert seen["402"] == 0
    assert seen["admitted"] == len(sim.charges) == 40
    assert sim.hyper3d_balance == 0
    assert seen["ledger"] > 0  # while Redis was down
    assert after_restart[0] > 0


# -- asyncio -------------------------------------------------------------------------------


def test_async_spend_on_redis(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """30 tasks spending 1 each from 10: exactly 10 run, and nothing stays held."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    ran: list[int] = []

    async def attempt(i: int) -> None:
        async with guard.spend(1):
            ran.append(i)
            await asyncio.sleep(0.005)

    async def main() -> list[object]:
        return await asyncio.gather(*(attempt(i) for i in range(30)), return_exceptions=True)

    results = asyncio.run(main())
    assert len(ran) == 10
    assert sum(isinstance(r, sg.InsufficientCredits) for r in results) == 20
    assert _held(ledger, hyper3d) == 0
    assert guard.held == 0
    assert sim.count(H3D_BALANCE) == 1


def test_cancelled_task_holds_nothing(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, ledger: RedisLedger
) -> None:
    """A task cancelled while its admission waits for a slow lookup leaves no hold, in
    Redis or in the process, once that lookup ends."""
    guard = sg.SpendGuard(hyper3d, ledger=ledger)
    sim.slow(H3D_BALANCE, 0.3)

    async def main() -> None:
        async def spend() -> None:
            async with guard.spend(3):
                raise AssertionError("the block never starts")

        task = asyncio.create_task(spend())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while _held(ledger, hyper3d) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _held(ledger, hyper3d) == 0
    assert guard.held == 0
    assert guard.available() == 10


class _Wallet:
    """An in-memory provider whose lookup can be paused after it read the balance."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: Decimal, account_id: str) -> None:
        self.balance = balance
        self.account_id = account_id
        self.pause: threading.Event | None = None
        self.reading: threading.Event | None = None

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        seen = self.balance
        if self.reading is not None and self.pause is not None:
            self.reading.set()
            self.pause.wait(5)
        return sg.Check.of(amount, seen, self.unit, "remote")


def test_long_batch_renews_its_hold_in_redis(
    hyper3d: sg.Hyper3D, ledger: RedisLedger, redis_url: str
) -> None:
    """A batch running longer than hold_ttl keeps its hold in Redis (each item renews the
    batch's hold_ttl, the heartbeat renews the hold in Redis), so another process cannot
    admit it meanwhile; when the batch ends the hold is gone."""
    guard = sg.SpendGuard(hyper3d, hold_ttl=1, ledger=ledger)
    with _open(redis_url) as other_ledger:
        other = sg.SpendGuard(hyper3d, ledger=other_ledger)
        started = time.monotonic()
        batch = guard.batch(range(15), lambda i: Decimal("0.5"))
        assert _held(ledger, hyper3d) == Decimal("7.5")
        for _ in batch:
            time.sleep(0.1)
            assert not other.check(3).sufficient  # 7.5 held of 10: 2.5 left at most
        assert time.monotonic() - started >= 1.5
        assert _held(ledger, hyper3d) == 0
        assert guard.balance() == Decimal("2.5")  # 15 items of 0.5 spent
        assert other.check(Decimal("2.5")).sufficient
