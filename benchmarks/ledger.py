"""Shared admission: spendguard's RedisLedger beside the Redis paths of the libraries one
would pick instead (``limits``' RedisStorage, ``pyrate-limiter``'s RedisBucket), on the same
redis-server, in the same run; and spendguard's SQLite ledger on one local file beside the
in-process ledger (which shares nothing between processes: its 4-process figure is four
separate budgets).

    python -m pip install -e '.[redis,bench]'
    python benchmarks/ledger.py                          # starts its own redis-server
    python benchmarks/ledger.py --url redis://host:6379/0 --quick

For each candidate: round trips per admission (counted on the client's connections: one
per command or pipeline sent), the time of one admission in PING round trips (one thread),
and admissions per second with 1 thread, 8 threads and 4 processes. Each figure is the
best of ``--rounds`` rounds, candidates taking turns. A spendguard check is one admission
decision; a spend is an admission that holds, then the settle. The run fails (exit 1) only
if a spendguard operation took another number of round trips than it should (1 and 2).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import spendguard as sg
from spendguard.testing import RedisServer

try:
    import redis
    from limits import RateLimitItemPerMinute
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    from spendguard.redis import RedisLedger
    from spendguard.sqlite import SQLiteLedger
except ImportError as exc:
    sys.exit(f"{exc}: pip install -e '.[redis,bench]'")

ACCOUNT = "bench:wallet"
HUGE = 10**9  # no candidate ever refuses: the benchmark measures admitting
_sent = itertools.count()


class CountingConnection(redis.connection.Connection):
    """Counts what it sends: one command, or one pipeline, is one round trip."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        next(_sent)
        super().send_packed_command(command, check_health)


def sent() -> int:
    """Round trips sent by this process so far."""
    return next(_sent)  # itertools.count has no peek: every read costs one, subtracted below


class Wallet:
    """An in-memory provider: the benchmark measures the ledger, not HTTP."""

    name, unit, account_id = "wallet", "credits", ACCOUNT

    def fetch_balance(self) -> Decimal:
        return Decimal(HUGE)

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, Decimal(HUGE), self.unit, "remote")


# -- the candidates: each builds its admission in the process that runs it ------------------


def spendguard_check(url: str) -> Callable[[], object]:
    ledger = RedisLedger.from_url(url, connection_class=CountingConnection)
    guard = sg.SpendGuard(Wallet(), ttl=3600, ledger=ledger)
    return lambda: guard.check(1).sufficient


def spendguard_spend(url: str) -> Callable[[], object]:
    ledger = RedisLedger.from_url(url, connection_class=CountingConnection)
    guard = sg.SpendGuard(Wallet(), ttl=3600, ledger=ledger)

    def spend() -> bool:
        with guard.spend(1):
            return True

    return spend


def limits_moving_window(url: str) -> Callable[[], object]:
    storage = RedisStorage(url, connection_class=CountingConnection)
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(HUGE)
    return lambda: limiter.hit(item, "bench", "moving")


def limits_fixed_window(url: str) -> Callable[[], object]:
    storage = RedisStorage(url, connection_class=CountingConnection)
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(HUGE)
    return lambda: limiter.hit(item, "bench", "fixed")


def pyrate_limiter(url: str) -> Callable[[], object]:
    client = redis.Redis.from_url(url, connection_class=CountingConnection)
    bucket = RedisBucket.init([Rate(HUGE, Duration.MINUTE)], client, "bench:pyrate")
    limiter = Limiter(bucket)
    return lambda: limiter.try_acquire("bench", blocking=False)


# One file for every process of a run: spawned children inherit the variable.
SQLITE_PATH = os.environ.setdefault(
    "SPENDGUARD_BENCH_SQLITE", os.path.join(tempfile.mkdtemp(prefix="spendguard-"), "bench.db")
)


def _spend(guard: sg.SpendGuard) -> Callable[[], object]:
    def spend() -> bool:
        with guard.spend(1):
            return True

    return spend


def in_process_spend(url: str) -> Callable[[], object]:
    return _spend(sg.SpendGuard(Wallet(), ttl=3600))


def sqlite_check(url: str) -> Callable[[], object]:
    guard = sg.SpendGuard(Wallet(), ttl=3600, ledger=SQLiteLedger(SQLITE_PATH))
    return lambda: guard.check(1).sufficient


def sqlite_spend(url: str) -> Callable[[], object]:
    return _spend(sg.SpendGuard(Wallet(), ttl=3600, ledger=SQLiteLedger(SQLITE_PATH)))


def ping(url: str) -> Callable[[], object]:
    client = redis.Redis.from_url(url, connection_class=CountingConnection)
    return lambda: client.ping() is True


CANDIDATES: dict[str, Callable[[str], Callable[[], object]]] = {
    "spendguard check": spendguard_check,
    "spendguard spend (admit + settle)": spendguard_spend,
    "limits moving window hit": limits_moving_window,
    "limits fixed window hit": limits_fixed_window,
    "pyrate-limiter RedisBucket acquire": pyrate_limiter,
    "PING (one round trip)": ping,
    "in-process spend (one process only)": in_process_spend,
    "SQLite ledger check (one file)": sqlite_check,
    "SQLite ledger spend (one file)": sqlite_spend,
}
EXPECTED = {"spendguard check": 1, "spendguard spend (admit + settle)": 2}


def rate(op: Callable[[], object], threads: int, seconds: float) -> tuple[int, float, int]:
    """Run ``op`` in ``threads`` threads for ``seconds``: (admissions, elapsed, round trips).
    Only an answer that admits counts."""
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            if op():
                n += 1
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    before = sent()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    return sum(counts), elapsed, sent() - before - 1


def in_process(name: str, url: str, seconds: float, start: Any, results: Any) -> None:
    """One of the processes of a multi-process figure."""
    op = CANDIDATES[name](url)
    for _ in range(20):
        op()
    start.wait()
    done, elapsed, _ = rate(op, 1, seconds)
    results.put(done / elapsed)


def processes(name: str, url: str, seconds: float, count: int = 4) -> float:
    """Admissions per second of ``count`` processes together."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results: Any = ctx.Queue()
    workers = [
        ctx.Process(target=in_process, args=(name, url, seconds, start, results))
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    start.set()
    total = sum(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
    return float(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (benchmark keys are left behind)")
    parser.add_argument("--quick", action="store_true", help="0.3 s per figure, one round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per figure (best wins)")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    with contextlib.ExitStack() as stack:
        if not args.url and shutil.which("redis-server") is None:
            sys.exit("redis-server is not on PATH: install it, or pass --url")
        url = args.url or stack.enter_context(RedisServer()).url
        ops = {name: build(url) for name, build in CANDIDATES.items()}
        for op in ops.values():  # connect, load scripts, create the account's state
            for _ in range(20):
                op()
        best: dict[tuple[str, str], float] = {}
        trips: dict[str, float] = {}
        for _ in range(rounds):
            for threads in (1, 8):
                for name, op in ops.items():
                    done, elapsed, sent_now = rate(op, threads, seconds)
                    key = (name, f"{threads}t")
                    best[key] = max(best.get(key, 0.0), done / elapsed)
                    if threads == 1:
                        trips[name] = sent_now / max(done, 1)
            for name in ops:
                key = (name, "4p")
                best[key] = max(best.get(key, 0.0), processes(name, url, seconds))
    ping_us = 1e6 / best[("PING (one round trip)", "1t")]
    header = (
        "candidate",
        "round trips/op",
        "µs/op (1 thread)",
        "PINGs/op",
        "ops/s 1 thread",
        "ops/s 8 threads",
        "ops/s 4 processes",
    )
    rows = []
    failed = False
    for name in ops:
        per_op = 1e6 / best[(name, "1t")]
        expected = EXPECTED.get(name)
        if expected is not None and round(trips[name], 2) != expected:
            failed = True
        rows.append(
            (
                name,
                f"{trips[name]:.2f}",
                f"{per_op:.0f}",
                f"{per_op / ping_us:.2f}",
                f"{best[(name, '1t')]:,.0f}",
                f"{best[(name, '8t')]:,.0f}",
                f"{best[(name, '4p')]:,.0f}",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) + " |")
    if failed:
        print("\nFAILED: a spendguard operation took an unexpected number of round trips")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
