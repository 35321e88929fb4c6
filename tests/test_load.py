"""Load: many threads on one cached balance while the provider flaps between OK and 503."""

from __future__ import annotations

import threading
import time
from collections import Counter

import spendguard as sg
from spendguard.testing import ProviderSimulator

H3D = "GET /api/v2/check_balance"
THREADS = 16
CALLS = 10_000


def test_flapping_provider_under_load() -> None:
    """16 x 10,000 guarded calls: no deadlock, only documented errors, every hold released."""
    with (
        ProviderSimulator(hyper3d_credits="200") as sim,
        sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2, retries=0) as provider,
    ):
        guard = sg.SpendGuard(provider, ttl=0.05, refresh_interval=0.01)
        ran = Counter[str]()
        ran_lock = threading.Lock()

        @guard(cost=1)
        def generate(worker: str) -> None:
            with ran_lock:
                ran[worker] += 1

        outcomes: list[Counter[str]] = [Counter() for _ in range(THREADS)]
        start = threading.Barrier(THREADS + 1)
        done = threading.Event()

        def work(index: int) -> None:
            seen = outcomes[index]
            start.wait()
            for _ in range(CALLS):
                try:
                    generate(f"w{index}")
                except sg.InsufficientCredits:
                    seen["refused"] += 1
                except sg.BalanceUnavailable:
                    seen["unavailable"] += 1
                except BaseException as exc:  # anything else fails the test below
                    seen[f"unexpected {type(exc).__name__}: {exc}"] += 1
                else:
                    seen["ran"] += 1

        def flap() -> None:
            # Every 20 ms the next three lookups answer 503: the provider is down about as
            # often as the snapshot expires.
            while not done.wait(0.02):
                sim.fail(H3D, status=503, times=3)

        workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
        flapper = threading.Thread(target=flap, daemon=True)
        for thread in workers:
            thread.start()
        flapper.start()
        started = time.monotonic()
        start.wait()
        deadline = started + 50
        for thread in workers:
            thread.join(timeout=max(deadline - time.monotonic(), 0))
        elapsed = time.monotonic() - started
        done.set()
        flapper.join(timeout=5)

        assert not any(thread.is_alive() for thread in workers), "deadlock: workers still running"
        total = sum(outcomes, Counter())
        unexpected = [kind for kind in total if kind.startswith("unexpected")]
        assert unexpected == []
        assert sum(total.values()) == THREADS * CALLS
        assert total["ran"] == sum(ran.values())
        assert total["ran"] > 0
        assert total["refused"] > 0
        assert total["unavailable"] > 0
        assert guard.held == 0
        assert guard.spent == total["ran"]
        stats = guard.stats
        assert stats.decisions == THREADS * CALLS
        assert stats.refused == total["refused"]
        assert stats.errors.get("BalanceUnavailable", 0) == total["unavailable"]
        lookups = sim.count(H3D)
    print(
        f"\n{THREADS}x{CALLS} calls in {elapsed:.1f} s: {total['ran']} ran, "
        f"{total['refused']} refused, {total['unavailable']} unavailable; "
        f"{lookups} lookups, {stats.cache_hits} cache hits"
    )
