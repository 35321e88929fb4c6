"""Many workers, one balance: four processes spend from one Hyper3D account through Redis.

Each worker process has its own guard, but all of them keep the account's snapshot,
spending and holds in one Redis (``RedisLedger``), so together they run exactly as many
generations as the balance pays for, and the provider sees one balance lookup for the
whole fleet. Runs as is against the bundled simulator:

    python examples/fleet.py                                   # a throwaway redis-server
    REDIS_URL=redis://localhost:6379/0 python examples/fleet.py

Needs ``pip install 'spendguard-preflight[redis]'`` and a Redis (or ``redis-server`` on
PATH); without them it says so and exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator

import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator, RedisServer

WORKERS = 4
PROMPTS_PER_WORKER = 5


def worker(redis_url: str, base_url: str, key: str, number: int) -> tuple[int, int]:
    """One process of the fleet: generate its prompts; return (submitted, refused)."""
    from spendguard.redis import RedisLedger

    submitted = refused = 0
    with (
        RedisLedger.from_url(redis_url) as ledger,
        sg.Hyper3D(key, base_url=base_url) as provider,
        requests.Session() as http,
    ):
        guard = sg.SpendGuard(provider, ttl=60, ledger=ledger, name=f"worker-{number}")
        for i in range(PROMPTS_PER_WORKER):
            try:
                with guard.spend("0.5"):  # a Regular generation
                    response = http.post(
                        f"{base_url}/api/v2/rodin",
                        data={"prompt": f"a lantern, variant {number}.{i}", "tier": "Regular"},
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=30,
                    )
                    response.raise_for_status()
                submitted += 1
            except sg.InsufficientCredits:
                refused += 1
    return submitted, refused


@contextlib.contextmanager
def redis_url() -> Iterator[str | None]:
    """``$REDIS_URL``, or a throwaway redis-server without persistence, or ``None``."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    with RedisServer() as server:
        yield server.url


def main() -> int:
    try:
        import spendguard.redis  # noqa: F401
    except ImportError as exc:
        print(f"fleet.py: {exc}")
        return 0
    with redis_url() as url, ProviderSimulator(hyper3d_credits="6") as sim:
        if url is None:
            print("fleet.py: needs Redis: set REDIS_URL, or install redis-server")
            return 0
        jobs = [(url, sim.url, sim.api_key, number) for number in range(WORKERS)]
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            results = pool.starmap(worker, jobs)
        for number, (submitted, refused) in enumerate(results):
            print(f"worker-{number}: {submitted} submitted, {refused} refused before starting")
        total = sum(submitted for submitted, _ in results)
        print(
            f"fleet: {total} generations for {sum(c.amount for c in sim.charges)} credits, "
            f"balance left {sim.hyper3d_balance}, "
            f"balance lookups {sim.count('GET /api/v2/check_balance')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
