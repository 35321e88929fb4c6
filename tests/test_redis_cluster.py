"""The Redis ledger on a real local Redis Cluster of three masters: hash-tagged keys in one
slot per account, and a node restarted mid-run without overspending.

Skipped when redis-server, redis-cli or the redis package is missing, unless
SPENDGUARD_REQUIRE_REDIS=1, which makes that an error (CI sets it).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

import spendguard as sg
from spendguard._redis_server import RedisClusterServer
from spendguard.testing import ProviderSimulator

REQUIRED = os.environ.get("SPENDGUARD_REQUIRE_REDIS") == "1"
INSTALL = (
    "to run these tests: `apt-get install redis-server redis-tools` (or your system's "
    "packages) and `pip install 'spendguard-preflight[redis]'`"
)

try:
    from redis.cluster import RedisCluster
    from redis.crc import key_slot

    from spendguard.redis import SCALE, RedisLedger
except ImportError:
    if REQUIRED:
        raise
    pytest.skip(f"the redis package is missing; {INSTALL}", allow_module_level=True)
if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
    if REQUIRED:
        pytest.fail(f"redis-server or redis-cli is not on PATH; {INSTALL}", pytrace=False)
    pytest.skip(f"redis-server or redis-cli is not on PATH; {INSTALL}", allow_module_level=True)

BEAT = 0.05


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    """Three cluster-enabled redis-servers joined into one cluster, for the module."""
    with RedisClusterServer() as running:
        yield running


def _open(url: str, **options: Any) -> RedisLedger:
    options.setdefault("heartbeat", BEAT)
    return RedisLedger.from_url(url, **options)


def test_from_url_picks_a_cluster_client_and_keeps_an_account_in_one_slot(
    cluster: RedisClusterServer, sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A redis+cluster:// URL gives a RedisCluster client; every key of an account hashes to
    one slot; guards on two accounts (two nodes, likely) hold, settle and refuse."""
    orthogonal = sg.Orthogonal(sim.api_key, base_url=sim.url)
    with _open(cluster.url) as ledger, _open(cluster.url.replace("+cluster", ""), cluster=True):
        assert isinstance(ledger.client, RedisCluster)
        assert repr(ledger).startswith("RedisLedger('redis+cluster://127.0.0.1:")
        for provider in (hyper3d, orthogonal):
            assert len({key_slot(key.encode()) for key in ledger.keys(provider.account_id)}) == 1
        credits = sg.SpendGuard(hyper3d, ledger=ledger)
        dollars = sg.SpendGuard(orthogonal, ledger=ledger)
        with credits.spend(4), dollars.spend("4.99"):
            assert not credits.check(7).sufficient
            assert not dollars.check("0.02").sufficient
        assert credits.available() == 6
        assert dollars.available() == Decimal("0.01")
        state = ledger.client.hgetall(ledger.keys(hyper3d.account_id)[0])
        assert Decimal(state[b"spent"].decode()) * SCALE == 4
        assert state[b"held"] == b"0"
    orthogonal.close()


def test_node_restart_mid_run_never_overspends(
    cluster: RedisClusterServer, sim: ProviderSimulator
) -> None:
    """4 threads spend 0.5 at a time from 20 credits while the node holding the account
    restarts (its keys lost): every admitted call is paid, none meets a 402, and the
    balance is spent to exactly 0."""
    sim.hyper3d_balance = 20
    stop = threading.Event()
    restarted = threading.Event()
    lock = threading.Lock()
    seen: dict[str, int] = {"admitted": 0, "refused": 0, "ledger": 0, "after": 0}

    def work() -> None:
        with (
            _open(cluster.url, socket_timeout=0.5, max_hold_ttl=2.0, heartbeat=0.2) as ledger,
            sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=5) as provider,
            requests.Session() as http,
        ):
            guard = sg.SpendGuard(provider, ledger=ledger)
            while not stop.is_set():
                try:
                    with guard.spend("0.5"):
                        response = http.post(
                            f"{sim.url}/api/v2/rodin",
                            data={"prompt": "a chair", "tier": "Regular"},
                            headers={"Authorization": f"Bearer {sim.api_key}"},
                            timeout=5,
                        )
                        time.sleep(0.05)  # the call takes a while: some are in flight
                    kind = "admitted" if response.status_code == 201 else str(response.status_code)
                except sg.InsufficientCredits:
                    kind = "refused"
                    time.sleep(0.01)
                except sg.LedgerError:
                    kind = "ledger"
                    time.sleep(0.01)
                with lock:
                    seen[kind] = seen.get(kind, 0) + 1
                    if kind == "admitted" and restarted.is_set():
                        seen["after"] += 1

    account = sg.Hyper3D(sim.api_key, base_url=sim.url).account_id
    probe = _open(cluster.url)
    state_key = probe.keys(account)[0]
    node = cluster.node_for_slot(key_slot(state_key.encode()))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(sim.charges) < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        epoch = probe.client.hget(state_key, "epoch")
        cluster.restart(node)
        restarted.set()
        while len(sim.charges) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert probe.client.hget(state_key, "epoch") != epoch  # the state was lost and recreated
    probe.close()
    assert seen.get("402", 0) == 0
    assert seen["admitted"] == len(sim.charges) == 40
    assert min(charge.balance_after for charge in sim.charges) >= 0
    assert sim.hyper3d_balance == 0
    assert seen["after"] > 0
