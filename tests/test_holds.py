"""The hold lifecycle: idempotent endings, every exit path, expiry, holds() and invariants."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spendguard as sg
from spendguard._account import Account
from spendguard._money import ATOM

from .conftest import FakeClock

_ids = itertools.count()


class Wallet:
    """An in-memory provider with a fixed balance (no network)."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: int | Decimal = 10) -> None:
        self.balance = Decimal(balance)
        self.account_id = f"wallet:holds:{next(_ids)}"
        self.lookups = 0

    def fetch_balance(self) -> Decimal:
        self.lookups += 1
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.fetch_balance(), self.unit, "remote")


def _guard(balance: int = 10, **options: object) -> sg.SpendGuard:
    options.setdefault("clock", FakeClock())
    options.setdefault("ttl", 3600)
    return sg.SpendGuard(Wallet(balance), **options)  # type: ignore[arg-type]


# -- idempotent endings ----------------------------------------------------------------


def test_second_settle_is_a_no_op() -> None:
    """Settling twice charges once, at the first amount."""
    guard = _guard()
    hold = guard.spend(4).__enter__()
    hold.settle(3)
    hold.settle(4)
    assert (hold.state, hold.charged, guard.spent, guard.held) == ("settled", 3, 3, 0)


def test_second_release_is_a_no_op() -> None:
    """Releasing twice gives back once; held never goes negative."""
    guard = _guard()
    hold = guard.spend(4).__enter__()
    hold.release()
    hold.release()
    assert (hold.state, hold.held, guard.held, guard.spent) == ("released", 0, 0, 0)


def test_release_after_settle_changes_nothing() -> None:
    """Once settled, a release neither refunds nor double-counts."""
    guard = _guard()
    with guard.spend(4) as hold:
        hold.settle(2)
        hold.release()
    assert (hold.state, guard.spent, guard.held, guard.available()) == ("settled", 2, 0, 8)


def test_settle_after_release_changes_nothing() -> None:
    """Once released, a settle does not charge."""
    guard = _guard()
    with guard.spend(4) as hold:
        hold.release()
        hold.settle()
    assert (hold.state, hold.charged, guard.spent) == ("released", 0, 0)


def test_hold_carries_label_and_times() -> None:
    """A hold knows its label, when it began and when it would expire."""
    clock = FakeClock(500.0)
    guard = _guard(clock=clock, hold_ttl=30)
    with guard.spend("1.5", label="render chair") as hold:
        assert (hold.label, hold.created_at, hold.expires_at) == ("render chair", 500.0, 530.0)
        assert hold.held == Decimal("1.5")
        assert repr(hold) == "<Hold 'render chair': 1.5 credits held>"


# -- every exit path -------------------------------------------------------------------


def test_return_inside_the_block_settles() -> None:
    """Returning from inside the block settles the hold in full."""
    guard = _guard()

    def work() -> str:
        with guard.spend(3):
            return "done"

    assert work() == "done"
    assert (guard.spent, guard.held, guard.holds()) == (3, 0, [])


def test_exception_settles_once() -> None:
    """An exception leaving the block settles it exactly once (the call may have billed)."""
    guard = _guard()
    with pytest.raises(RuntimeError), guard.spend(3) as hold:
        raise RuntimeError("boom")
    hold.settle()
    assert (hold.state, guard.spent, guard.held) == ("settled", 3, 0)


def test_keyboard_interrupt_settles() -> None:
    """A BaseException such as KeyboardInterrupt still ends the hold."""
    guard = _guard()
    with pytest.raises(KeyboardInterrupt), guard.spend(3):
        raise KeyboardInterrupt
    assert (guard.spent, guard.held, guard.holds()) == (3, 0, [])


def test_decorated_call_interrupted_ends_its_hold() -> None:
    """A decorated call interrupted by KeyboardInterrupt leaves nothing held."""
    guard = _guard()

    @guard(cost=2)
    def generate() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate()
    assert (guard.spent, guard.held) == (2, 0)


def test_generator_closed_early_settles() -> None:
    """A generator holding credit and closed before it finishes ends its hold."""
    guard = _guard()

    def produce() -> Iterator[int]:
        with guard.spend(2):
            yield 1
            yield 2

    items = produce()
    assert next(items) == 1
    assert guard.held == 2
    items.close()
    assert (guard.spent, guard.held) == (2, 0)


def test_cancelled_async_block_leaves_nothing_held() -> None:
    """A task cancelled inside `async with guard.spend()` ends the hold, synchronously."""
    guard = _guard()

    async def main() -> None:
        entered = asyncio.Event()

        async def work() -> None:
            async with guard.spend(3):
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await entered.wait()
        assert guard.holds()[0].amount == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (guard.spent, guard.held, guard.holds()) == (3, 0, [])


# -- holds() ---------------------------------------------------------------------------


def test_holds_lists_open_holds_oldest_first() -> None:
    """holds() lists what is held now, oldest first, and forgets ended holds."""
    clock = FakeClock()
    guard = _guard(clock=clock)
    first = guard.spend(1, label="first").__enter__()
    clock.advance(1)
    with guard.spend(2, label="second") as second:
        assert guard.holds() == [first, second]
    assert guard.holds() == [first]
    first.release()
    assert guard.holds() == []


def test_holds_are_shared_by_guards_on_one_account() -> None:
    """Every guard on an account sees every hold on it, whichever guard took it."""
    wallet, clock = Wallet(), FakeClock()
    first = sg.SpendGuard(wallet, clock=clock)
    second = sg.SpendGuard(wallet, clock=clock, budget=5)
    with first.spend(2, label="from first") as hold:
        assert second.holds() == [hold]


# -- expiry ----------------------------------------------------------------------------


def test_abandoned_hold_expires_and_warns(spendguard_logs: pytest.LogCaptureFixture) -> None:
    """A hold nobody ends stops blocking after hold_ttl; a WARNING names amount, label, age."""
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=60)
    guard.spend(8, label="stuck render").__enter__()
    assert not guard.check(5).sufficient
    clock.advance(61)
    assert guard.check(5).sufficient
    assert (guard.held, guard.holds()) == (0, [])
    warnings = [r for r in spendguard_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'stuck render'" in message
    assert "8 credits" in message
    assert "61.0s" in message


def test_hold_is_not_expired_before_its_time() -> None:
    """Until hold_ttl has passed, an open hold keeps blocking."""
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=60)
    hold = guard.spend(8).__enter__()
    clock.advance(59)
    assert not guard.check(5).sufficient
    assert guard.holds() == [hold]


def test_expired_hold_settled_late_still_counts() -> None:
    """An expired hold that its owner settles later is counted as spent, never held twice."""
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=60)
    hold = guard.spend(4).__enter__()
    clock.advance(61)
    assert guard.holds() == []
    assert hold.state == "expired"
    hold.settle()
    hold.settle()
    assert (hold.state, guard.held, guard.spent) == ("settled", 0, 4)
    # The expiry dropped the cached balance (what the call spent was unknown): the next
    # decision asks the provider, which charged the call meanwhile.
    guard.provider.balance -= 4  # type: ignore[attr-defined]
    assert guard.available() == 6


def test_expired_hold_released_late_charges_nothing() -> None:
    """Releasing an expired hold ends it without touching held or spent."""
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=60)
    hold = guard.spend(4).__enter__()
    clock.advance(61)
    guard.check(1)
    hold.release()
    assert (hold.state, guard.held, guard.spent) == ("released", 0, 0)


def test_hold_ttl_none_never_expires() -> None:
    """With hold_ttl=None a hold blocks until it is ended, however long that takes."""
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=None)
    hold = guard.spend(8).__enter__()
    assert hold.expires_at == float("inf")
    clock.advance(10**9)
    assert guard.holds() == [hold]


def test_decisions_do_not_scan_holds_before_one_is_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """The expiry sweep runs only once the earliest expiry is reached, not per decision."""
    sweeps = []
    original = Account.expire

    def counting(self: Account, now: float) -> list[Any]:
        sweeps.append(now)
        return original(self, now)

    monkeypatch.setattr(Account, "expire", counting)
    clock = FakeClock()
    guard = _guard(clock=clock, hold_ttl=60)
    with guard.spend(1):
        for _ in range(100):
            guard.check(1)
            clock.advance(0.5)
    assert sweeps == []
    clock.advance(20)
    guard.check(1)
    assert len(sweeps) == 1


def test_hold_ttl_is_validated() -> None:
    """A negative or non-numeric hold_ttl is a ConfigurationError."""
    for bad in (-1, 0, "300", True):
        with pytest.raises(sg.ConfigurationError, match="hold_ttl"):
            sg.SpendGuard(Wallet(), hold_ttl=bad)  # type: ignore[arg-type]


# -- finalizers never deadlock ---------------------------------------------------------


def test_finalizer_never_waits_for_a_held_lock() -> None:
    """A batch finalized while its thread holds the account lock defers the ending to
    the next decision or reading."""
    guard = _guard()
    batch = guard.batch(range(4), 1)
    next(batch)
    account = guard._engine.account
    with account.lock:
        batch._finalizer()
        assert (account.held, len(account.deferred)) == (4 * ATOM, 1)
    assert (guard.held, guard.spent, guard.holds()) == (0, 1, [])


# -- invariants under random interleavings ---------------------------------------------

_OPS = ["settle", "release", "partial", "raise", "batch", "break", "prefix", "cancel", "acancel"]


@settings(max_examples=30, deadline=None)
@given(
    balance=st.integers(min_value=0, max_value=30),
    floor=st.integers(min_value=0, max_value=4),
    ops=st.lists(
        st.tuples(st.integers(min_value=1, max_value=6), st.sampled_from(_OPS)),
        min_size=1,
        max_size=16,
    ),
)
def test_random_interleavings_keep_the_invariants(
    balance: int, floor: int, ops: list[tuple[int, str]]
) -> None:
    """Spends, settles, releases, batches and cancellations from 4 threads: at every
    admission held >= 0 and spent + held <= balance - floor; nothing held at the end."""
    guard = _guard(balance, floor=floor)
    account = guard._engine.account
    broken: list[str] = []

    def admitted() -> None:
        with account.lock:
            if account.held < 0 or account.spent + account.held > (balance - floor) * ATOM:
                broken.append(f"held={account.held} spent={account.spent}")

    async def cancelled(amount: int, batch: bool) -> None:
        ready = asyncio.Event()

        async def work() -> None:
            try:
                if batch:
                    async with guard.abatch(range(amount), 1) as items:
                        async for _ in items:
                            admitted()
                            ready.set()
                            await asyncio.sleep(10)
                else:
                    async with guard.spend(amount):
                        admitted()
                        ready.set()
                        await asyncio.sleep(10)
            finally:
                ready.set()

        task = asyncio.create_task(work())
        await ready.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def run(op: tuple[int, str]) -> None:
        amount, kind = op
        try:
            if kind in ("cancel", "acancel"):
                asyncio.run(cancelled(amount, kind == "acancel"))
            elif kind in ("batch", "break", "prefix"):
                for index, _ in enumerate(guard.batch(range(amount), 1, partial=kind == "prefix")):
                    admitted()
                    if kind == "break" and index == 1:
                        break
            else:
                with guard.spend(amount) as hold:
                    admitted()
                    if kind == "release":
                        hold.release()
                    elif kind == "partial":
                        hold.settle(Decimal(amount) / 2)
                    elif kind == "raise":
                        raise KeyError(amount)
        except (sg.InsufficientCredits, KeyError):
            pass

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, ops))
    assert broken == []
    assert (guard.held, account.held, guard.holds()) == (0, 0, [])
    assert guard.spent <= max(balance - floor, 0)
    assert guard.available() == balance - floor - guard.spent
