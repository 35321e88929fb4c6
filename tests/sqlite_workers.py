"""The worker processes of the SQLite ledger's tests (importable by ``multiprocessing``'s
spawn start method: module-level functions, plain arguments)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any


def spend_worker(
    *,
    path: str,
    sim_url: str,
    api_key: str,
    calls: int,
    ttl: float,
    start: Any,
    results: Any,
) -> None:
    """Make ``calls`` guarded Rodin generations (0.5 credits each) through a guard on a
    SQLiteLedger; put ``(admitted, refused, lookups)`` on ``results``."""
    import requests

    import spendguard as sg
    from spendguard.sqlite import SQLiteLedger

    admitted = refused = 0
    with (
        SQLiteLedger(path) as ledger,
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


def hold_forever(
    path: str, sim_url: str, api_key: str, amount: str, *, max_hold_ttl: float, held: Any
) -> None:
    """Hold ``amount`` on a SQLiteLedger (no ``hold_ttl``: held while this process lives),
    signal ``held``, and never end it (the test kills this process)."""
    import spendguard as sg
    from spendguard.sqlite import SQLiteLedger

    ledger = SQLiteLedger(path, max_hold_ttl=max_hold_ttl)
    provider = sg.Hyper3D(api_key, base_url=sim_url, timeout=5)
    guard = sg.SpendGuard(provider, hold_ttl=None, ledger=ledger)
    with guard.spend(Decimal(amount)):
        held.set()
        while True:
            time.sleep(1)
