"""The cached path: decorated calls settle exactly, whatever shortcut their ending takes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spendguard as sg
from spendguard import _money

from .conftest import FakeClock

_accounts = iter(range(10**9))


class _Wallet:
    """An in-memory provider whose balance the guarded calls themselves draw down."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: Decimal | int) -> None:
        self.balance = Decimal(balance)
        self.account_id = f"hot:{next(_accounts)}"
        self.lookups = 0

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        self.lookups += 1
        return sg.Check.of(amount, self.balance, self.unit, "remote")


@pytest.mark.parametrize("calls", [1, 255, 256, 257, 1_000])
def test_decorated_calls_settle_exactly(calls: int) -> None:
    """Spent, held, balance and available are exact after any number of calls."""
    wallet = _Wallet(10_000)
    guard = sg.SpendGuard(wallet, floor=7)

    @guard(cost=lambda i: Decimal(i % 3 + 1) / 2)
    def work(i: int) -> int:
        return i

    total = Decimal(0)
    for i in range(calls):
        assert work(i) == i
        total += Decimal(i % 3 + 1) / 2
    assert guard.held == 0
    assert guard.spent == total
    assert guard.balance() == 10_000 - total
    assert guard.available() == 10_000 - 7 - total
    assert wallet.lookups == 1


def test_ended_calls_never_pile_up() -> None:
    """Ended calls wait to be settled in bulk, but never more than a few hundred."""
    guard = sg.SpendGuard(_Wallet(10**9))

    @guard(cost=1)
    def work() -> None:
        return None

    longest = 0
    for _ in range(5_000):
        work()
        longest = max(longest, len(guard._engine.account.ended))
    assert 0 < longest <= 257
    assert guard.spent == 5_000


def test_a_lookup_counts_each_ended_call_once(clock: FakeClock) -> None:
    """Calls that ended before a lookup are in the new balance, not subtracted again."""
    wallet = _Wallet(10)
    guard = sg.SpendGuard(wallet, ttl=5, clock=clock)

    @guard(cost=1)
    def generate() -> None:
        wallet.balance -= 1  # the provider charges as the call runs

    for _ in range(3):
        generate()
    assert guard.available() == 7
    clock.advance(6)
    assert guard.available() == 7  # looked up again: 7 left, nothing double-counted
    assert wallet.lookups == 2
    generate()
    assert guard.available() == 6
    assert guard.spent == 4


def test_raising_calls_still_count_as_spent() -> None:
    """A call that started may have been charged: it counts as spent when it raises."""
    guard = sg.SpendGuard(_Wallet(5))

    @guard(cost=2)
    def fail() -> None:
        raise KeyError("boom")

    for _ in range(2):
        with pytest.raises(KeyError):
            fail()
    assert guard.spent == 4
    assert guard.held == 0
    with pytest.raises(sg.InsufficientCredits):
        fail()
    assert guard.spent == 4  # a refused call never started, so it spent nothing
    assert guard.held == 0


@settings(max_examples=30, deadline=None)
@given(
    balance=st.integers(min_value=0, max_value=60),
    floor=st.integers(min_value=0, max_value=5),
    calls=st.lists(
        st.tuples(st.integers(min_value=1, max_value=6), st.booleans(), st.booleans()),
        min_size=1,
        max_size=60,
    ),
)
def test_threads_on_two_guards_never_overspend(
    balance: int, floor: int, calls: list[tuple[int, bool, bool]]
) -> None:
    """Decorated calls of random cost from 4 threads through two guards on one account:
    what they spend stays within balance - floor and every guard's books balance."""
    wallet = _Wallet(balance)
    first = sg.SpendGuard(wallet, floor=floor)
    second = sg.SpendGuard(wallet, floor=floor)
    lock = threading.Lock()
    ran: list[int] = []

    def body(cost: int, fail: bool) -> None:
        with lock:
            ran.append(cost)
        if fail:
            raise KeyError(cost)

    by_first = first(cost=lambda cost, fail: cost)(body)
    by_second = second(cost=lambda cost, fail: cost)(body)

    def run(call: tuple[int, bool, bool]) -> None:
        cost, fail, use_first = call
        with contextlib.suppress(sg.InsufficientCredits, KeyError):
            (by_first if use_first else by_second)(cost, fail)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, calls))
    assert sum(ran) <= max(balance - floor, 0)
    assert first.held == second.held == 0
    assert first.spent + second.spent == sum(ran)
    assert first.available() == balance - floor - sum(ran)


def test_async_calls_settle_exactly() -> None:
    """Coroutines interleaved on one event loop settle like threads do."""
    guard = sg.SpendGuard(_Wallet(1_000))

    @guard(cost=1)
    async def generate(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(generate(i) for i in range(600)))

    assert asyncio.run(main()) == list(range(600))
    assert guard.held == 0
    assert guard.spent == 600
    assert guard.available() == 400


@pytest.mark.parametrize("floor", [0, 3])
def test_check_shortcut_answers_like_the_full_decision(floor: int) -> None:
    """check() on a plain guard (the inlined reading) and on a guard with a listener (the
    full decision) give the same answer, fitting or not."""
    wallet = _Wallet(10)
    plain = sg.SpendGuard(wallet, floor=floor)
    heard: list[sg.Decision] = []
    listened = sg.SpendGuard(_Wallet(10), floor=floor, on_decision=heard.append)
    for amount in ("0", "1", "6.5", "7", "10", "12"):
        plain.check(amount)  # the first one looks the balance up; the rest are cached
        listened.check(amount)
        fast, full = plain.check(amount), listened.check(amount)
        assert fast._replace(age=None) == full._replace(age=None)
        assert fast.source == "cache"
    assert plain.stats.cache_hits == listened.stats.cache_hits
    assert len(heard) == 12


def test_check_is_immutable_and_replaceable() -> None:
    """A Check cannot be changed in place; _replace makes a changed copy."""
    check = sg.Check.of(Decimal(3), Decimal(2), "credits", "cache", 0.5)
    with pytest.raises(AttributeError):
        check.sufficient = True  # type: ignore[misc]
    assert check == sg.Check(False, Decimal(3), Decimal(2), Decimal(1), "credits", "cache", 0.5)
    assert hash(check) == hash(check._replace())
    assert check._replace(age=None).age is None
    assert str(check) == "insufficient: need 3 credits, 2 available, short by 1 (cache)"


def test_int_amounts_are_converted_once_and_the_cache_is_bounded() -> None:
    """Recurring int amounts come from a small cache; many distinct ones do not grow it."""
    assert _money.to_amount(7) is _money.to_amount(7)
    assert _money.to_amount(7) == Decimal(7)
    for value in range(100_000, 101_000):
        assert _money.to_amount(value) == Decimal(value)
    assert len(_money._INT_AMOUNTS) <= 256
    with pytest.raises(ValueError, match="negative"):
        _money.to_amount(-1)
    with pytest.raises(TypeError):
        _money.to_amount(True)
