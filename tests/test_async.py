"""The async faces on a real event loop: decorated coroutines, async with, cancellation."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

H3D_BALANCE = "GET /api/v2/check_balance"


def test_async_function_admitted_and_refused(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """An async guarded function runs when affordable and never starts when not."""
    guard = sg.SpendGuard(hyper3d)
    ran: list[str] = []

    @guard(cost=lambda prompt: 6)
    async def generate(prompt: str) -> str:
        ran.append(prompt)
        await asyncio.sleep(0)
        return prompt.upper()

    async def main() -> None:
        assert await generate("a") == "A"
        with pytest.raises(sg.InsufficientCredits):
            await generate("b")

    asyncio.run(main())
    assert ran == ["a"]
    assert guard.spent == 6


def test_async_burst_makes_one_lookup(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """50 tasks on a stale cache make one lookup, and the loop is never blocked by it."""
    guard = sg.SpendGuard(hyper3d)
    sim.slow(H3D_BALANCE, 0.2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1

    async def main() -> list[sg.Check]:
        tick = asyncio.create_task(ticker())
        checks = await asyncio.gather(*(guard.acheck("0.1") for _ in range(50)))
        await tick
        return checks

    checks = asyncio.run(main())
    assert all(c.sufficient for c in checks)
    assert sim.count(H3D_BALANCE) == 1
    assert ticks == 10


def test_async_tasks_never_over_admit(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """30 concurrent tasks spending 1 of 10 credits: exactly 10 run."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=1)
    async def generate() -> bool:
        await asyncio.sleep(0.01)
        return True

    async def main() -> list[object]:
        return await asyncio.gather(*(generate() for _ in range(30)), return_exceptions=True)

    results = asyncio.run(main())
    assert results.count(True) == 10
    assert sum(isinstance(r, sg.InsufficientCredits) for r in results) == 20
    assert guard.held == 0


def test_async_with_spend(hyper3d: sg.Hyper3D) -> None:
    """async with holds during the block and settles on exit."""
    guard = sg.SpendGuard(hyper3d)

    async def main() -> sg.Hold:
        async with guard.spend("2.5") as hold:
            assert guard.held == Decimal("2.5")
            hold.settle(2)
        return hold

    hold = asyncio.run(main())
    assert hold.state == "settled"
    assert guard.spent == 2
    assert guard.held == 0


def test_cancelled_task_leaves_nothing_held(hyper3d: sg.Hyper3D) -> None:
    """A task cancelled while holding credit is finalised: nothing stays held."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=3)
    async def generate() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(generate())
        await asyncio.sleep(0.2)
        assert guard.held == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert guard.held == 0
    assert guard.spent == 3


def test_cancelled_during_lookup_holds_nothing(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A task cancelled while its lookup is in flight never takes a hold."""
    guard = sg.SpendGuard(hyper3d)
    sim.slow(H3D_BALANCE, 0.3)

    async def main() -> None:
        task = asyncio.create_task(guard.spend(1).__aenter__())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)

    asyncio.run(main())
    assert guard.held == 0


def test_async_balance_available_and_require(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """The a-prefixed methods mirror the sync ones."""
    guard = sg.SpendGuard(hyper3d, floor=1)

    async def main() -> None:
        assert await guard.abalance() == 10
        assert await guard.aavailable() == 9
        assert (await guard.arequire(9)).sufficient
        with pytest.raises(sg.InsufficientCredits):
            await guard.arequire(10)

    asyncio.run(main())
    assert sim.count(H3D_BALANCE) == 1


def test_async_unavailable_policy(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """The failure policy applies to async decisions too."""
    strict = sg.SpendGuard(hyper3d)
    sim.fail(H3D_BALANCE, status=503, times=3)

    async def main() -> None:
        with pytest.raises(sg.BalanceUnavailable):
            await strict.acheck(1)

    asyncio.run(main())
