"""Many processes on one machine, one balance: a process pool shares a SQLite file.

Four worker processes of a ``ProcessPoolExecutor`` each have their own guard, but all of
them keep the account's snapshot, spending and holds in one SQLite file
(``SQLiteLedger``), so together they run exactly as many generations as the balance pays
for, and the provider sees one balance lookup for all of them. No server and no extra
package: ``sqlite3`` ships with Python. Runs as is against the bundled simulator:

    python examples/process_pool.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import requests

import spendguard as sg
from spendguard.sqlite import SQLiteLedger
from spendguard.testing import ProviderSimulator

WORKERS = 4
PROMPTS = 20

# What each worker process keeps between tasks, set up once by start_worker.
_worker: dict[str, tuple[sg.SpendGuard, requests.Session]] = {}


def start_worker(path: str, base_url: str, key: str) -> None:
    """Run once in each worker process: its ledger (one per process) and its guard."""
    ledger = SQLiteLedger(path)
    guard = sg.SpendGuard(sg.Hyper3D(key, base_url=base_url), ttl=60, ledger=ledger)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    _worker["guard"] = (guard, http)


def generate(prompt: str, base_url: str) -> str:
    """One Regular generation (0.5 credits), refused before it starts if unaffordable."""
    guard, http = _worker["guard"]
    try:
        with guard.spend("0.5"):
            response = http.post(
                f"{base_url}/api/v2/rodin", data={"prompt": prompt, "tier": "Regular"}, timeout=30
            )
            response.raise_for_status()
    except sg.InsufficientCredits:
        return f"pid {os.getpid()}: {prompt!r} refused before starting"
    return f"pid {os.getpid()}: {prompt!r} submitted as {response.json()['uuid']}"


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as folder,
        ProviderSimulator(hyper3d_credits="6") as sim,
    ):
        path = os.path.join(folder, "spend.db")  # any local file all workers can open
        with ProcessPoolExecutor(
            WORKERS,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(path, sim.url, sim.api_key),
        ) as pool:
            prompts = [f"a lantern, variant {i}" for i in range(PROMPTS)]
            for line in pool.map(generate, prompts, [sim.url] * PROMPTS):
                print(line)
        print(
            f"pool: {len(sim.charges)} generations for {sum(c.amount for c in sim.charges)} "
            f"credits, balance left {sim.hyper3d_balance}, "
            f"balance lookups {sim.count('GET /api/v2/check_balance')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
