"""Real threads racing on one balance: single-flight lookups and no over-admission."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import spendguard as sg
from spendguard.testing import ProviderSimulator

H3D_BALANCE = "GET /api/v2/check_balance"


def _burst(n: int, fn: object) -> list[object]:
    """Run fn in n threads released at the same instant; return results or exceptions."""
    barrier = threading.Barrier(n)

    def run() -> object:
        barrier.wait()
        try:
            return fn()  # type: ignore[operator]
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: run(), range(n)))


def test_32_threads_on_an_expired_cache_make_one_lookup(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """However many threads arrive on a stale cache, exactly one lookup runs."""
    guard = sg.SpendGuard(hyper3d, ttl=60)
    sim.slow(H3D_BALANCE, 0.2)
    results = _burst(32, lambda: guard.check("0.1"))
    assert all(isinstance(r, sg.Check) and r.sufficient for r in results)
    assert sim.count(H3D_BALANCE) == 1


def test_orthogonal_burst_makes_one_check(sim: ProviderSimulator) -> None:
    """The single-flight holds for Orthogonal's remote check too."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000)
    guard = sg.SpendGuard(provider)
    sim.slow("POST /v1/credits/check", 0.2)
    results = _burst(32, lambda: guard.check("0.01"))
    assert all(isinstance(r, sg.Check) and r.sufficient for r in results)
    assert sim.count("POST /v1/credits/check") == 1
    provider.close()


def test_failing_lookup_is_shared_by_the_burst(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """When the lookup fails, the threads that waited for it get its error, not new requests."""
    guard = sg.SpendGuard(hyper3d)
    sim.fail(H3D_BALANCE, status=503, delay=0.2, times=3)
    results = _burst(16, lambda: guard.check(1))
    assert all(isinstance(r, sg.BalanceUnavailable) for r in results)
    assert sim.count(H3D_BALANCE) <= 6
    assert guard.held == 0


def test_40_threads_against_a_balance_for_10(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """40 threads, each spending 0.5 of 5 credits: exactly 10 run, the balance never dips."""
    sim.hyper3d_balance = 5
    guard = sg.SpendGuard(hyper3d)
    session = requests.Session()

    @guard(cost="0.5")
    def generate() -> int:
        response = session.post(
            f"{sim.url}/api/v2/rodin",
            data={"prompt": "a chair", "tier": "Regular"},
            headers={"Authorization": f"Bearer {sim.api_key}"},
            timeout=5,
        )
        time.sleep(0.02)
        return response.status_code

    results = _burst(40, generate)
    session.close()
    admitted = [r for r in results if r == 201]
    refused = [r for r in results if isinstance(r, sg.InsufficientCredits)]
    assert (len(admitted), len(refused)) == (10, 30)
    assert len(sim.charges) == 10
    assert sim.hyper3d_balance == 0
    assert min(c.balance_after for c in sim.charges) >= 0
    assert guard.held == 0
    assert guard.spent == 5


class _Wallet:
    """An in-memory provider for property tests (no network, exact balance)."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: Decimal, account_id: str) -> None:
        self.balance = balance
        self.account_id = account_id

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.balance, self.unit, "remote")


_accounts = iter(range(10**9))


@settings(max_examples=40, deadline=None)
@given(
    balance=st.integers(min_value=0, max_value=40),
    floor=st.integers(min_value=0, max_value=5),
    ops=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=8),
            st.sampled_from(["settle", "release", "partial", "raise"]),
        ),
        min_size=1,
        max_size=24,
    ),
)
def test_no_overspend_under_random_interleavings(
    balance: int, floor: int, ops: list[tuple[int, str]]
) -> None:
    """Random spends ending in settle, release, partial settle or an exception, from 4
    threads: admitted spending never exceeds balance - floor and nothing stays held."""
    wallet = _Wallet(Decimal(balance), f"wallet:{next(_accounts)}")
    guard = sg.SpendGuard(wallet, floor=floor)
    lock = threading.Lock()
    charged: list[Decimal] = []
    peak = [Decimal(0)]

    def run(op: tuple[int, str]) -> None:
        amount, end = op
        try:
            with guard.spend(amount) as hold:
                with lock:
                    peak[0] = max(peak[0], guard.held + guard.spent)
                if end == "release":
                    hold.release()
                elif end == "partial":
                    hold.settle(Decimal(amount) / 2)
                elif end == "raise":
                    raise KeyError(amount)
                with lock:
                    charged.append(hold.charged or Decimal(amount))
        except (sg.InsufficientCredits, KeyError):
            pass

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, ops))
    assert guard.held == 0
    assert peak[0] <= max(balance - floor, 0)
    assert guard.spent <= max(balance - floor, 0)
    assert guard.available() == balance - floor - guard.spent


@pytest.mark.parametrize("threads", [8])
def test_shared_holds_across_guards_and_threads(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, threads: int
) -> None:
    """Two guards on one account never admit more than it holds between them."""
    first = sg.SpendGuard(hyper3d)
    second = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url))
    admitted = []
    lock = threading.Lock()

    def work(i: int) -> None:
        guard = first if i % 2 else second
        try:
            with guard.spend(1):
                time.sleep(0.01)
                with lock:
                    admitted.append(i)
        except sg.InsufficientCredits:
            pass

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(30)))
    assert len(admitted) == 10
    assert first.spent + second.spent == 10
    second.provider.close()  # type: ignore[attr-defined]
