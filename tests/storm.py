"""A Ctrl-C storm, run as its own process by tests/test_engine_laws.py.

    python tests/storm.py FACE SECONDS

SIGALRM every 0.4 ms raises KeyboardInterrupt anywhere inside a loop of one face of the
guard (decorated calls, async calls, ``spend`` blocks, batches, a guard with a listener).
Afterwards every hold is expired and the account inspected; the last line printed is a
JSON report: interrupts landed, whether a lock is still held, what is held (the account's
and the guard's) before and after the expiry, and whether the guard still admits.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import spendguard as sg


class Wallet:
    """An in-memory provider with a balance nothing runs out of."""

    name, unit, account_id = "wallet", "credits", "wallet:storm"

    def fetch_balance(self) -> Decimal:
        return Decimal(10**9)

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, Decimal(10**9), self.unit, "remote")


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Storm:
    """KeyboardInterrupt on every SIGALRM while ``armed`` (inside a step, not the driver)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.raised = 0
        self.armed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.raised += 1
            raise KeyboardInterrupt

    def __enter__(self) -> Storm:
        self._old = signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, self._old)


def steps(guard: sg.SpendGuard, clock: Clock) -> dict[str, Callable[[], object]]:
    @guard(cost=1)
    def generate() -> int:
        return 1

    @guard(cost=1)
    async def agenerate() -> int:
        return 1

    def spend() -> None:
        with guard.spend(1) as hold:
            if clock.now % 2:
                hold.settle("0.5")

    def batch() -> None:
        with guard.batch(range(5), 1) as items:
            for _ in items:
                pass

    def run_async() -> None:
        # A fresh loop each time: an interrupt inside asyncio's own bookkeeping may leave a
        # loop unusable, and the thread marked as running one (asyncio's, not the guard's).
        asyncio.events._set_running_loop(None)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(agenerate())
        finally:
            if not loop.is_running():
                loop.close()

    return {
        "decorated": generate,
        "listener": generate,
        "async": run_async,
        "spend": spend,
        "batch": batch,
    }


def main(face: str, seconds: float) -> dict[str, object]:
    clock = Clock()
    listeners = [lambda decision: None] if face == "listener" else []
    guard = sg.SpendGuard(Wallet(), clock=clock, ttl=10**9, hold_ttl=60, on_decision=listeners)
    step = steps(guard, clock)[face]
    # The balance is looked up before the storm: the async face looks it up in a thread of
    # asyncio's executor, and an interrupt inside `Thread.start()` can leave the standard
    # library's own start-up lock held, which hangs the interpreter's exit.
    step()
    sys.unraisablehook = lambda unraisable: None  # what the interrupts abandon complains
    deadline = time.monotonic() + seconds
    with Storm(0.0004) as storm:
        while time.monotonic() < deadline:
            # Disarmed first thing on the way out, before the except clause matches: on
            # Python 3.10 an interrupt can also land while an except clause is matching.
            try:
                try:
                    storm.armed = True
                    step()
                finally:
                    storm.armed = False
            except (KeyboardInterrupt, sg.InsufficientCredits):
                pass
    gc.collect()
    account = guard._engine.account
    before_expiry = guard.held  # what only hold_ttl could still end
    clock.now += 10**6  # every hold left behind expires
    guard.holds()
    locked = [account.lock.locked(), account.refresh_lock.locked()]
    guard_held = guard.held  # ends the calls still queued, then reads
    with account.lock:
        account_held = account.held
    return {
        "landed": storm.raised,
        "locked": locked,
        "held": [str(account_held), str(guard_held)],
        "held_before_expiry": str(before_expiry),
        "admits_after": guard.check(1).sufficient,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
