"""Admissions per second: the in-process ledger against the Redis ledger on loopback.

    python -m pip install -e '.[redis]'
    python benchmarks/ledger.py                          # starts its own redis-server
    python benchmarks/ledger.py --url redis://host:6379/0 --quick

A check is one admission decision (no hold); a spend is an admission that holds, then the
settle. With Redis every decision on a fresh snapshot must cost one EVALSHA: the table
shows how many each operation took. The run fails (exit 1) only if that count is off.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal

import spendguard as sg
from spendguard.testing import RedisServer

try:
    from spendguard.redis import RedisLedger
except ImportError as exc:
    sys.exit(str(exc))


class Wallet:
    """An in-memory provider: the benchmark measures the ledger, not HTTP."""

    name, unit = "wallet", "credits"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.balance = Decimal(10**6)

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.balance, self.unit, "remote")


def rate(op: Callable[[], object], threads: int, seconds: float) -> tuple[int, float]:
    """Run ``op`` in ``threads`` threads for ``seconds``; (operations, elapsed)."""
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            op()
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts), time.perf_counter() - start


def evalsha_calls(ledger: RedisLedger) -> int:
    stats = ledger.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Redis to use (its ledger keys are left behind)")
    parser.add_argument("--quick", action="store_true", help="0.3 s per figure, not 1 s")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.0
    with contextlib.ExitStack() as stack:
        if not args.url and shutil.which("redis-server") is None:
            sys.exit("redis-server is not on PATH: install it, or pass --url")
        url = args.url or stack.enter_context(RedisServer()).url
        ledger = stack.enter_context(RedisLedger.from_url(url))
        rows = []
        failed = False
        for kind in ("in-process", "redis"):
            for threads in (1, 8):
                wallet = Wallet(f"bench:{kind}:{threads}:{time.time_ns()}")
                guard = sg.SpendGuard(wallet, ledger=ledger if kind == "redis" else None)
                guard.check(1)  # the one lookup, and the script loaded

                def spend(guard: sg.SpendGuard = guard) -> None:
                    with guard.spend(1):
                        pass

                for name, op, expected in (
                    ("check", lambda guard=guard: guard.check(1), 1),
                    ("spend", spend, 2),
                ):
                    before = evalsha_calls(ledger)
                    done, elapsed = rate(op, threads, seconds)
                    per_op = (evalsha_calls(ledger) - before) / done
                    if kind == "redis" and per_op != expected:
                        failed = True
                    shown = f"{per_op:.2f}" if kind == "redis" else "-"
                    rows.append(
                        (
                            kind,
                            threads,
                            name,
                            f"{done / elapsed:,.0f}",
                            f"{elapsed / done * 1e6:.1f}",
                            shown,
                        )
                    )
        for threads in (1, 8):
            done, elapsed = rate(ledger.client.ping, threads, seconds)
            rows.append(
                (
                    "redis",
                    threads,
                    "PING (a round trip)",
                    f"{done / elapsed:,.0f}",
                    f"{elapsed / done * 1e6:.1f}",
                    "-",
                )
            )
    header = ("ledger", "threads", "operation", "ops/s", "µs/op", "EVALSHA/op")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    if failed:
        print("\nFAILED: a Redis decision took more than one EVALSHA", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
