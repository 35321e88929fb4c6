"""The worker processes of the Redis tests (importable by ``multiprocessing``'s spawn
start method), beside the throwaway redis-server they run against."""

from __future__ import annotations

import os
import shutil
import signal
from decimal import Decimal
from typing import Any

REDIS_SERVER = shutil.which("redis-server")
BEAT = 0.05
"""The workers' heartbeat (the tests' own ledgers use the same: one fleet, one heartbeat)."""

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
        RedisLedger.from_url(redis_url, heartbeat=BEAT) as ledger,
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


def hold_long(
    redis_url: str,
    sim_url: str,
    api_key: str,
    amount: str,
    held: Any,
    *,
    release: Any,
    max_hold_ttl: float,
    heartbeat: float = BEAT,
) -> None:
    """A long call: hold ``amount`` (``hold_ttl=None``) on a RedisLedger whose holds expire
    ``max_hold_ttl`` after their last renewal, signal ``held``, and release the hold once
    ``release`` is set (the test may kill this process instead)."""
    import spendguard as sg
    from spendguard.redis import RedisLedger

    with (
        RedisLedger.from_url(redis_url, max_hold_ttl=max_hold_ttl, heartbeat=heartbeat) as ledger,
        sg.Hyper3D(api_key, base_url=sim_url, timeout=5) as provider,
    ):
        guard = sg.SpendGuard(provider, hold_ttl=None, ledger=ledger)
        with guard.spend(Decimal(amount)) as hold:
            held.set()
            release.wait(60)
            hold.release()


def spend_once(
    redis_url: str,
    sim_url: str,
    api_key: str,
    amount: str,
    results: Any,
    *,
    heartbeat: float = BEAT,
) -> None:
    """A process started late: ask to spend ``amount`` once; put ``"admitted"``,
    ``"refused"`` or ``"ledger error"`` on ``results``."""
    import spendguard as sg
    from spendguard.redis import RedisLedger

    with (
        RedisLedger.from_url(redis_url, heartbeat=heartbeat) as ledger,
        sg.Hyper3D(api_key, base_url=sim_url, timeout=5) as provider,
    ):
        guard = sg.SpendGuard(provider, ledger=ledger)
        try:
            with guard.spend(Decimal(amount)) as hold:
                hold.release()
            results.put("admitted")
        except sg.InsufficientCredits:
            results.put("refused")
        except sg.LedgerError:
            results.put("ledger error")


def kill(pid: int) -> None:
    """``kill -9``."""
    os.kill(pid, signal.SIGKILL)
