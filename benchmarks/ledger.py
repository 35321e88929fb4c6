"""Admissions per second: the in-process ledger against the Redis ledger on loopback and
the SQLite ledger on a local file.

    python -m pip install -e '.[redis]'
    python benchmarks/ledger.py                          # starts its own redis-server
    python benchmarks/ledger.py --url redis://host:6379/0 --quick

A check is one admission decision (no hold); a spend is an admission that holds, then the
settle. With Redis every decision on a fresh snapshot must cost one EVALSHA: the table
shows how many each operation took. The run fails (exit 1) only if that count is off.
The SQLite ledger is measured with 1 and 8 threads, and both shared ledgers with 4
processes spending from one account at once (spawned, each with its own ledger).
"""

from __future__ import annotations

import argparse
import contextlib
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
from spendguard.sqlite import SQLiteLedger
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


Row = tuple[str, object, str, str, str, str]


def _row(kind: str, threads: object, name: str, done: int, elapsed: float) -> Row:
    return (kind, threads, name, f"{done / elapsed:,.0f}", f"{elapsed / done * 1e6:.1f}", "-")


def sqlite_rows(seconds: float) -> list[Row]:
    """Checks and spends on a SQLiteLedger in a temporary file, 1 and 8 threads."""
    rows = []
    with (
        tempfile.TemporaryDirectory() as folder,
        SQLiteLedger(os.path.join(folder, "ledger.db")) as ledger,
    ):
        for threads in (1, 8):
            wallet = Wallet(f"bench:sqlite:{threads}:{time.time_ns()}")
            guard = sg.SpendGuard(wallet, ledger=ledger)
            guard.check(1)  # the one lookup, and the file created

            def spend(guard: sg.SpendGuard = guard) -> None:
                with guard.spend(1):
                    pass

            for name, op in (("check", lambda guard=guard: guard.check(1)), ("spend", spend)):
                done, elapsed = rate(op, threads, seconds)
                rows.append(_row("sqlite", threads, name, done, elapsed))
    return rows


def process_rows(redis_url: str, seconds: float, processes: int = 4, rounds: int = 3) -> list[Row]:
    """Spends per second of ``processes`` spawned processes on one account, each with its
    own SQLiteLedger on one file, or each with its own RedisLedger.

    The two groups of processes are started once and take turns, ``rounds`` times; each
    group's best round is reported (noise on a shared machine only ever slows a round).
    """
    ctx = multiprocessing.get_context("spawn")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        groups: dict[str, list[Any]] = {}
        results: Any = ctx.Queue()
        workers = []
        for kind, where in (("sqlite", os.path.join(folder, "ledger.db")), ("redis", redis_url)):
            account = f"bench:{kind}:processes:{time.time_ns()}"
            groups[kind] = [ctx.Queue() for _ in range(processes)]
            workers += [
                ctx.Process(
                    target=spend_in_a_process,
                    args=(kind, where, account, commands, results),
                    daemon=True,
                )
                for commands in groups[kind]
            ]
        for worker in workers:
            worker.start()
        for _ in workers:
            results.get(timeout=120)  # each is ready
        for _ in range(rounds):
            for kind, commands in groups.items():
                for queue in commands:
                    queue.put(seconds)
                counts = [results.get(timeout=120) for _ in commands]
                per_second = sum(n for n, _ in counts) / max(t for _, t in counts)
                best[kind] = max(best.get(kind, 0.0), per_second)
        for commands in groups.values():
            for queue in commands:
                queue.put(None)
        for worker in workers:
            worker.join(30)
    return [
        (kind, f"{processes} proc", "spend", f"{rate:,.0f}", f"{1e6 / rate:.1f}", "-")
        for kind, rate in best.items()
    ]


def spend_in_a_process(kind: str, where: str, account: str, commands: Any, results: Any) -> None:
    """One process of :func:`process_rows`: spend in a loop for as many seconds as each
    command says, until the command is ``None``."""
    ledger = SQLiteLedger(where) if kind == "sqlite" else RedisLedger.from_url(where)
    with ledger:
        guard = sg.SpendGuard(Wallet(account), ledger=ledger)
        guard.check(1)
        results.put(None)

        def spend() -> None:
            with guard.spend(1):
                pass

        while (seconds := commands.get(timeout=300)) is not None:
            results.put(rate(spend, 1, seconds))


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
        rows += sqlite_rows(seconds)
        rows += process_rows(url, seconds)
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
