"""The worker processes of the Redis tests (importable by ``multiprocessing``'s spawn
start method), beside the throwaway redis-server they run against."""

from __future__ import annotations

import os
import shutil
import signal
import time
from decimal import Decimal
from typing import Any

REDIS_SERVER = shutil.which("redis-server")

# -- worker processes (spawned: module-level functions, plain arguments) ------------------


def spend_worker(
    *,
    redis_url: str,
    sim_url: str,
    api_key: str,
    calls: int,
    ttl: float,
    start: Any,
    results: Any,
) -> None:
    """Make ``calls`` guarded Rodin generations (0.5 credits each) through a guard on a
    RedisLedger; put ``(admitted, refused, lookups)`` on ``results``."""
    import requests

    import spendguard as sg
    from spendguard.redis import RedisLedger

    admitted = refused = 0
    with (
        RedisLedger.from_url(redis_url) as ledger,
        sg.Hyper3D(api_key, base_url=sim_url, timeout=5) as provider,
        requests.Session() as http,
    ):
        guard = sg.SpendGuard(provider, ttl=ttl, refresh_interval=ttl, ledger=ledger)
        start.wait()
        for _ in range(calls):
            try:
                with guard.spend("0.5"):
                    response = http.post(
                        f"{sim_url}/api/v2/rodin",
                        data={"prompt": "a chair", "tier": "Regular"},
                        headers={"Authorization": f"Bearer {api_key}"},
                        timeout=5,
                    )
                    response.raise_for_status()
                admitted += 1
            except sg.InsufficientCredits:
                refused += 1
        results.put((admitted, refused, guard.stats.lookups))


def hold_forever(redis_url: str, sim_url: str, api_key: str, amount: str, held: Any) -> None:
    """Hold ``amount`` on a RedisLedger with a 1 s ``hold_ttl``, signal ``held``, and never
    end it (the test kills this process)."""
    import spendguard as sg
    from spendguard.redis import RedisLedger

    ledger = RedisLedger.from_url(redis_url)
    provider = sg.Hyper3D(api_key, base_url=sim_url, timeout=5)
    guard = sg.SpendGuard(provider, hold_ttl=1.0, ledger=ledger)
    with guard.spend(Decimal(amount)):
        held.set()
        while True:
            time.sleep(1)


def kill(pid: int) -> None:
    """``kill -9``."""
    os.kill(pid, signal.SIGKILL)
