"""Batches, forecasts and budget-aware map, over the simulator and in-memory wallets."""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import pickle
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

H3D_BALANCE = "GET /api/v2/check_balance"
RODIN = "POST /api/v2/rodin"
CHECK = "POST /v1/credits/check"

_ids = itertools.count()


class Wallet:
    """An in-memory provider with a fixed balance (no network)."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: int | Decimal = 10) -> None:
        self.balance = Decimal(balance)
        self.account_id = f"wallet:batch:{next(_ids)}"

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.fetch_balance(), self.unit, "remote")


def _guard(balance: int = 10, **options: object) -> sg.SpendGuard:
    options.setdefault("clock", FakeClock())
    return sg.SpendGuard(Wallet(balance), **options)  # type: ignore[arg-type]


def _tier(i: int) -> str:
    return "Gen-2.5-Extreme-High" if i % 4 == 0 else "Regular"


def _price(i: int) -> str:
    return "1.0" if _tier(i) == "Gen-2.5-Extreme-High" else "0.5"


def _fail_at(batch: sg.Batch[int], stop: int, error: BaseException) -> None:
    for i in batch:
        if i == stop:
            raise error


# -- holding the whole batch up front --------------------------------------------------


def test_batch_holds_the_total_before_the_first_item(hyper3d: sg.Hyper3D) -> None:
    """batch() holds every item's cost before handing out anything."""
    guard = sg.SpendGuard(hyper3d)
    batch = guard.batch(range(6), lambda i: Decimal(i) / 2)
    assert (batch.total, batch.count, guard.held, batch.done) == (Decimal("7.5"), 6, 7.5, 0)
    assert guard.holds() == [batch.hold]
    batch.close()


def test_10000_items_cost_one_lookup(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A 10,000-item batch priced by a callable makes exactly one balance lookup."""
    sim.hyper3d_balance = 8000
    guard = sg.SpendGuard(hyper3d)
    priced: list[int] = []

    def cost(i: int) -> str:
        priced.append(i)
        return _price(i)

    done = sum(1 for _ in guard.batch(range(10_000), cost))
    assert (done, len(priced)) == (10_000, 10_000)
    assert sim.count(H3D_BALANCE) == 1
    assert (guard.spent, guard.held) == (Decimal(6250), 0)


def test_each_item_moves_from_held_to_spent(hyper3d: sg.Hyper3D) -> None:
    """An item counts as spent when the loop asks for the next one, and the last at the end."""
    guard = sg.SpendGuard(hyper3d)
    seen = []
    for item in guard.batch([1, 2, 3], lambda n: n):
        seen.append((item, guard.held, guard.spent))
    assert seen == [(1, 6, 0), (2, 5, 1), (3, 3, 3)]
    assert (guard.held, guard.spent) == (0, 6)


def test_batch_posting_each_item_to_rodin(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """Items that each POST /api/v2/rodin are all admitted and charged by the simulator."""
    guard = sg.SpendGuard(hyper3d)
    with requests.Session() as http, guard.batch(range(8), _price) as batch:
        for i in batch:
            answer = http.post(
                f"{sim.url}/api/v2/rodin",
                data={"prompt": f"chair {i}", "tier": _tier(i)},
                headers={"Authorization": f"Bearer {sim.api_key}"},
                timeout=5,
            )
            assert answer.status_code == 201
    assert sim.count(RODIN) == 8
    assert sum(c.amount for c in sim.charges) == guard.spent == 5
    assert sim.hyper3d_balance == 5


def test_batch_over_orthogonal_asks_one_check(sim: ProviderSimulator) -> None:
    """A dollar batch on Orthogonal makes one remote check for its whole total."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000)
    guard = sg.SpendGuard(provider)
    assert list(guard.batch(["a", "b", "c"], "0.03")) == ["a", "b", "c"]
    assert [r.json()["amountCents"] for r in sim.requests if r.route == CHECK] == [9000]
    assert guard.spent == Decimal("0.09")
    provider.close()


# -- refusals and partial batches ------------------------------------------------------


def test_batch_that_does_not_fit_is_refused_up_front(hyper3d: sg.Hyper3D) -> None:
    """A batch over the balance raises before item one, saying how many items would fit."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(sg.InsufficientCredits) as info:
        guard.batch(range(30), "0.5")
    error = info.value
    assert (error.required, error.available, error.shortfall) == (15, 10, 5)
    assert error.affordable == 20
    assert str(error) == (
        "hyper3d: need 15 credits, 10 available, short by 5; only the first 20 items fit"
    )
    assert (guard.held, guard.holds()) == (0, [])


def test_refusal_pickles_with_affordable() -> None:
    """InsufficientCredits keeps `affordable` through pickling."""
    error = sg.InsufficientCredits(
        required=Decimal(3), available=Decimal(1), unit="credits", provider="x", affordable=1
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.affordable, str(copy)) == (1, str(error))
    assert str(copy).endswith("; only the first item fits")


def test_partial_batch_holds_the_longest_prefix(hyper3d: sg.Hyper3D) -> None:
    """partial=True holds what fits and lists the rest in .skipped."""
    guard = sg.SpendGuard(hyper3d)
    costs = {"a": 4, "b": 5, "c": 2, "d": 1}
    batch = guard.batch(costs, costs.__getitem__, partial=True)
    assert (batch.count, batch.total, batch.skipped, guard.held) == (2, 9, ["c", "d"], 9)
    assert list(batch) == ["a", "b"]
    assert (guard.spent, guard.held) == (9, 0)


def test_partial_batch_with_nothing_affordable(hyper3d: sg.Hyper3D) -> None:
    """When not even the first item fits, nothing is held and everything is skipped."""
    guard = sg.SpendGuard(hyper3d)
    batch = guard.batch([1, 2], 11, partial=True)
    assert (batch.count, batch.hold, batch.skipped, guard.holds()) == (0, None, [1, 2], [])
    assert list(batch) == []


def test_partial_batch_within_a_budget() -> None:
    """The guard's budget bounds a partial batch like the balance does."""
    guard = _guard(100, budget=3)
    batch = guard.batch(range(10), 1, partial=True)
    assert (batch.count, len(batch.skipped)) == (3, 7)
    batch.close()


def test_partial_batch_refused_by_the_provider(sim: ProviderSimulator) -> None:
    """When the provider's own check says no, a partial batch cannot know what fits: it raises."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000)
    guard = sg.SpendGuard(provider)
    sim.fail(CHECK, status=200, body={"sufficient": False, "balanceCents": 500_000})
    with pytest.raises(sg.InsufficientCredits, match="provider reported"):
        guard.batch(range(3), "0.01", partial=True)
    assert guard.held == 0
    provider.close()


def test_empty_batch_holds_and_asks_nothing(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A batch of no items makes no lookup and holds nothing."""
    guard = sg.SpendGuard(hyper3d)
    assert list(guard.batch([], 1)) == []
    assert sim.count() == 0


def test_bad_item_cost_holds_nothing(hyper3d: sg.Hyper3D) -> None:
    """A cost callable returning a bad amount raises before anything is held."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(ValueError, match="cost must not be negative"):
        guard.batch([1, 2], lambda i: -i)
    assert guard.held == 0


def test_batch_refuses_async_iterables(hyper3d: sg.Hyper3D) -> None:
    """batch() given an async iterable is a TypeError naming abatch()."""
    guard = sg.SpendGuard(hyper3d)

    async def numbers() -> AsyncIterator[int]:
        yield 1

    items = numbers()
    with pytest.raises(TypeError, match=r"guard\.abatch\(\)"):
        guard.batch(items, 1)  # type: ignore[arg-type]
    asyncio.run(items.aclose())


# -- items never reached are released --------------------------------------------------


def test_break_releases_the_rest(hyper3d: sg.Hyper3D) -> None:
    """Breaking out of the loop counts the item in hand and releases the others."""
    guard = sg.SpendGuard(hyper3d)
    for i in guard.batch(range(10), 1):
        if i == 2:
            break
    assert (guard.spent, guard.held, guard.holds()) == (3, 0, [])


def test_exception_in_with_block_releases_the_rest(hyper3d: sg.Hyper3D) -> None:
    """An exception leaving `with guard.batch(...)` releases what was never reached."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(RuntimeError), guard.batch(range(10), 1) as batch:
        _fail_at(batch, 4, RuntimeError("item failed"))
    assert (batch.spent, batch.held, guard.spent, guard.held) == (5, 0, 5, 0)
    assert batch.hold is not None
    assert batch.hold.state == "settled"


def test_keyboard_interrupt_releases_the_rest(hyper3d: sg.Hyper3D) -> None:
    """KeyboardInterrupt in the loop body ends the batch like any exception."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(KeyboardInterrupt), guard.batch(range(10), 1) as batch:
        _fail_at(batch, 0, KeyboardInterrupt())
    assert (guard.spent, guard.held) == (1, 0)


def test_close_is_idempotent(hyper3d: sg.Hyper3D) -> None:
    """close() releases the rest once; a second close and further iteration do nothing."""
    guard = sg.SpendGuard(hyper3d)
    batch = guard.batch(range(5), 1)
    batch.close()
    batch.close()
    assert list(batch) == []
    assert (guard.spent, guard.held, batch.hold and batch.hold.state) == (0, 0, "released")


def test_garbage_collected_batch_releases(hyper3d: sg.Hyper3D) -> None:
    """A batch dropped half-way, even inside a reference cycle, releases what it held."""
    guard = sg.SpendGuard(hyper3d)
    batch = guard.batch(range(5), 2)
    next(batch)
    next(batch)
    cycle: list[object] = [batch]
    cycle.append(cycle)
    del batch, cycle
    gc.collect()
    assert (guard.spent, guard.held, guard.holds()) == (4, 0, [])


def test_generator_over_a_batch_closed_early(hyper3d: sg.Hyper3D) -> None:
    """A generator consuming a batch and closed early releases the rest."""
    guard = sg.SpendGuard(hyper3d)

    def pipeline() -> Iterator[int]:
        with guard.batch(range(5), 1) as batch:
            yield from batch

    items = pipeline()
    assert next(items) == 0
    items.close()
    assert (guard.spent, guard.held) == (1, 0)


def test_batch_from_another_thread_is_consistent(hyper3d: sg.Hyper3D) -> None:
    """Batches in threads beside decorated calls never over-admit the shared account."""
    guard = sg.SpendGuard(hyper3d)
    admitted: list[int] = []
    lock = threading.Lock()

    @guard(cost=1)
    def single() -> None:
        time.sleep(0.005)

    def work(n: int) -> None:
        try:
            if n % 2:
                single()
                count = 1
            else:
                count = sum(1 for _ in guard.batch(range(3), 1))
        except sg.InsufficientCredits:
            return
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == guard.spent <= 10
    assert guard.held == 0


# -- expiry and batches ----------------------------------------------------------------


def test_working_batch_renews_its_hold() -> None:
    """A batch making progress never expires, however long the whole job takes."""
    clock = FakeClock()
    guard = _guard(10, clock=clock, hold_ttl=60, ttl=10**6)
    for _ in guard.batch(range(5), 1):
        clock.advance(50)
        assert guard.holds() != []
        assert guard.available() == 10 - guard.spent - guard.held
    assert (guard.spent, guard.held) == (5, 0)


def test_stalled_batch_expires(spendguard_logs: pytest.LogCaptureFixture) -> None:
    """A batch whose owner stopped iterating stops blocking after hold_ttl, with a WARNING."""
    clock = FakeClock()
    guard = _guard(10, clock=clock, hold_ttl=60, ttl=10**6)
    batch = guard.batch(range(5), 2, label="nightly renders")
    next(batch)
    next(batch)
    clock.advance(61)
    assert guard.check(8).sufficient
    assert "'nightly renders' of 10 credits expired" in spendguard_logs.text
    assert list(batch) == [2, 3, 4]
    assert (guard.spent, guard.held) == (10, 0)


# -- async batches ---------------------------------------------------------------------


def test_abatch_over_an_async_iterable(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """abatch() reads an async iterable, holds its total once and counts items as done."""
    guard = sg.SpendGuard(hyper3d)

    async def prompts() -> AsyncIterator[str]:
        for word in ("chair", "table", "lamp"):
            await asyncio.sleep(0)
            yield word

    async def main() -> list[tuple[str, Decimal]]:
        seen = []
        batch = guard.abatch(prompts(), "1.5")
        assert not batch.started
        async for prompt in batch:
            seen.append((prompt, guard.held))
        return seen

    assert asyncio.run(main()) == [("chair", 4.5), ("table", 3), ("lamp", 1.5)]
    assert (guard.spent, guard.held, sim.count(H3D_BALANCE)) == (Decimal("4.5"), 0, 1)


def test_abatch_refused_on_the_first_step(hyper3d: sg.Hyper3D) -> None:
    """An async batch that does not fit raises on `async with`, holding nothing."""
    guard = sg.SpendGuard(hyper3d)

    async def main() -> None:
        with pytest.raises(sg.InsufficientCredits) as info:
            async with guard.abatch(range(12), 1):
                pytest.fail("started")
        assert info.value.affordable == 10

    asyncio.run(main())
    assert guard.held == 0


def test_abatch_partial(hyper3d: sg.Hyper3D) -> None:
    """partial=True works the same for async batches."""
    guard = sg.SpendGuard(hyper3d)

    async def main() -> tuple[list[int], list[int]]:
        async with guard.abatch(range(12), 1, partial=True) as batch:
            return [i async for i in batch], batch.skipped

    assert asyncio.run(main()) == (list(range(10)), [10, 11])
    assert guard.spent == 10


def test_cancelled_task_in_an_async_batch_leaves_nothing_held(hyper3d: sg.Hyper3D) -> None:
    """A task cancelled mid-batch counts the item in hand and releases the rest."""
    guard = sg.SpendGuard(hyper3d)

    async def main() -> None:
        started = asyncio.Event()

        async def work() -> None:
            async with guard.abatch(range(8), 1) as batch:
                async for _ in batch:
                    started.set()
                    await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await started.wait()
        assert guard.held == 8
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (guard.spent, guard.held, guard.holds()) == (1, 0, [])


def test_cancelled_during_the_batch_lookup_holds_nothing(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """Cancelling an async batch while its lookup is in flight never takes a hold."""
    guard = sg.SpendGuard(hyper3d)
    sim.slow(H3D_BALANCE, 0.3)

    async def main() -> None:
        task = asyncio.create_task(guard.abatch(range(3), 1).start())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)

    asyncio.run(main())
    assert (guard.held, guard.holds()) == (0, [])


# -- forecast --------------------------------------------------------------------------


def test_forecast_has_no_side_effect(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """forecast() holds nothing and lists no hold; it only looks the balance up."""
    guard = sg.SpendGuard(hyper3d)
    forecast = guard.forecast(range(30), "0.5")
    assert forecast == sg.Forecast(30, Decimal(15), Decimal(10), 20, Decimal(5), "credits")
    assert not forecast.sufficient
    assert (guard.held, guard.spent, guard.holds()) == (0, 0, [])
    assert sim.count(H3D_BALANCE) == 1


def test_forecast_reads_like_a_sentence(hyper3d: sg.Hyper3D) -> None:
    """str(forecast) is a line a person can print before starting a job."""
    guard = sg.SpendGuard(hyper3d)
    assert str(guard.forecast(range(30), "0.5")) == (
        "30 items need 15 credits, 10 available: 20 fit, short by 5"
    )
    assert str(guard.forecast(["x"], 2)) == "1 item needs 2 credits, 10 available: all fit"


def test_forecast_names_the_budget() -> None:
    """A forecast limited by the guard's budget says so."""
    guard = _guard(100, budget=2)
    forecast = guard.forecast(range(3), 1)
    assert (forecast.affordable, forecast.available) == (2, 2)
    assert str(forecast).endswith("(budget of 2 credits for this guard)")


def test_aforecast_mirrors_forecast(hyper3d: sg.Hyper3D) -> None:
    """aforecast() gives the same answer from a coroutine."""
    guard = sg.SpendGuard(hyper3d)
    assert asyncio.run(guard.aforecast(range(30), "0.5")) == guard.forecast(range(30), "0.5")


# -- progress --------------------------------------------------------------------------


def test_progress_shows_items_spent_held_and_available(
    hyper3d: sg.Hyper3D, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True draws a tqdm bar with spent, held and available beside it."""
    guard = sg.SpendGuard(hyper3d)
    assert list(guard.batch(range(4), 1, progress=True, label="chairs")) == [0, 1, 2, 3]
    drawn = capsys.readouterr().err
    assert "chairs" in drawn
    assert "4/4" in drawn
    assert "spent=4 credits" in drawn
    assert "held=0 credits" in drawn
    assert "available=6 credits" in drawn


def test_progress_without_tqdm_names_the_extra(
    hyper3d: sg.Hyper3D, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without tqdm, progress=True is an ImportError naming the pip extra; nothing is held."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(ImportError, match=r"pip install 'spendguard-preflight\[progress\]'"):
        guard.batch(range(3), 1, progress=True)
    assert guard.held == 0


# -- map -------------------------------------------------------------------------------


def test_map_reports_refused_items(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """map() runs what the balance covers, in order, and reports every refused item."""
    guard = sg.SpendGuard(hyper3d)
    http = requests.Session()

    def generate(prompt: str) -> int:
        answer = http.post(
            f"{sim.url}/api/v2/rodin",
            data={"prompt": prompt},
            headers={"Authorization": f"Bearer {sim.api_key}"},
            timeout=5,
        )
        return answer.status_code

    prompts = [f"chair {i}" for i in range(30)]
    result = guard.map(generate, prompts, cost="0.5", workers=8)
    http.close()
    assert result.results == (201,) * 20
    assert len(result.refused) == 10
    assert [r.item for r in result.refused] == prompts[20:]
    assert all(isinstance(r.error, sg.InsufficientCredits) for r in result.refused)
    assert repr(result) == "<MapResult 20 ran, 10 refused>"
    assert (sim.count(RODIN), sim.hyper3d_balance, guard.held) == (20, 0, 0)


def test_map_runs_no_more_at_once_than_the_balance_covers() -> None:
    """With credit for 3 items and 8 workers, at most 3 items ever run at once."""
    guard = _guard(3)
    running, peak = [0], [0]
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * 10

    result = guard.map(work, range(6), cost=1, workers=8)
    assert (result.results, [r.index for r in result.refused]) == ((0, 10, 20), [3, 4, 5])
    assert peak[0] <= 3


def test_map_never_exceeds_its_workers() -> None:
    """map() runs at most `workers` items at once."""
    guard = _guard(100)
    running, peak = [0], [0]
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i

    result = guard.map(work, range(20), cost=1, workers=3)
    assert result.ok
    assert result.results == tuple(range(20))
    assert peak[0] <= 3


def test_map_raises_the_first_failure_and_ends_every_hold() -> None:
    """An item that raises stops further admissions; the error surfaces, nothing stays held."""
    guard = _guard(100)
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError(i)
        return i

    with pytest.raises(ValueError, match="2"):
        guard.map(work, range(50), cost=1, workers=1)
    assert started == [0, 1, 2]
    assert (guard.held, guard.spent, guard.holds()) == (0, 3, [])


def test_map_validates_workers() -> None:
    """workers must be a positive integer."""
    guard = _guard()
    with pytest.raises(sg.ConfigurationError, match="workers"):
        guard.map(str, [1], cost=1, workers=0)


def test_map_refuses_a_coroutine_function_before_admitting_anything() -> None:
    """map() runs in threads: a coroutine function (or a method or partial of one) would
    only make coroutines; it is a TypeError before anything is held or spent."""
    guard = _guard(10)

    async def work(i: int) -> int:
        return i

    class Job:
        async def __call__(self, i: int) -> int:
            return i

    for fn in (work, functools.partial(work), Job()):
        with pytest.raises(TypeError, match=r"coroutine function: use `await guard\.amap"):
            guard.map(fn, range(3), cost=1)  # type: ignore[arg-type]
    assert (guard.spent, guard.held, guard.holds()) == (0, 0, [])


def test_map_releases_an_item_whose_function_returned_an_awaitable() -> None:
    """A plain function returning a coroutine ran nothing of it: the item's hold is
    released, the coroutine closed (no 'never awaited' warning), and map stops there."""
    guard = _guard(10)

    async def later(i: int) -> int:
        return i

    made: list[Any] = []

    def work(i: int) -> Any:
        made.append(later(i))
        return made[-1]

    with pytest.raises(TypeError, match="returned coroutine without running it"):
        guard.map(work, range(5), cost=1, workers=1)
    assert len(made) == 1
    assert made[0].cr_frame is None  # closed
    assert (guard.spent, guard.held, guard.holds()) == (0, 0, [])


def test_amap_of_a_plain_function_says_so_and_charges_what_ran() -> None:
    """amap() of a function that returns no awaitable: the function ran (its cost is
    charged, never lost), the error names it and points to map(), no further item starts."""
    guard = _guard(10)
    ran: list[int] = []

    def double(i: int) -> int:
        ran.append(i)
        return i * 2

    with pytest.raises(TypeError, match=r"double returns, but it returned int .*guard\.map"):
        asyncio.run(guard.amap(double, range(5), cost=1, workers=1))  # type: ignore[arg-type]
    assert ran == [0]
    assert (guard.spent, guard.held, guard.holds()) == (1, 0, [])


def test_amap_reports_refused_items() -> None:
    """amap() mirrors map() for coroutine functions."""
    guard = _guard(5)

    async def double(i: int) -> int:
        await asyncio.sleep(0.001)
        return i * 2

    result = asyncio.run(guard.amap(double, range(8), cost=1, workers=3))
    assert result.results == (0, 2, 4, 6, 8)
    assert [r.index for r in result.refused] == [5, 6, 7]
    assert (guard.spent, guard.held) == (5, 0)


def test_cancelled_amap_leaves_nothing_held() -> None:
    """Cancelling amap() cancels its running tasks and ends every hold."""
    guard = _guard(100)

    async def slow(i: int) -> int:
        await asyncio.sleep(10)
        return i

    async def main() -> None:
        task = asyncio.create_task(guard.amap(slow, range(10), cost=1, workers=4))
        await asyncio.sleep(0.05)
        assert guard.held == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (guard.held, guard.spent, guard.holds()) == (0, 4, [])


@pytest.mark.parametrize("ending", ["settle", "settle 1", "release"])
def test_ending_a_batchs_hold_ends_the_batch(ending: str) -> None:
    """Once its hold is settled or released, a batch hands out no further item: nothing
    would pay for it, and the balance must never admit more than it holds."""
    guard = _guard(10)
    ran: list[int] = []
    with guard.batch(range(10), 1) as batch:
        for item in batch:
            ran.append(item)
            if item == 2:
                assert batch.hold is not None
                if ending == "release":
                    batch.hold.release()
                else:
                    batch.hold.settle(None if ending == "settle" else 1)
    assert ran == [0, 1, 2]
    spent = {"settle": 10, "settle 1": 1, "release": 2}[ending]
    assert (guard.spent, guard.held, guard.holds()) == (spent, 0, [])
    assert guard.check(10 - spent).sufficient
    assert not guard.check(10 - spent + 1).sufficient


def test_ending_an_async_batchs_hold_ends_the_batch() -> None:
    """The same for ``abatch``."""
    guard = _guard(10)
    ran: list[int] = []

    async def main() -> None:
        async with guard.abatch(range(10), 1) as batch:
            async for item in batch:
                ran.append(item)
                if item == 1:
                    assert batch.hold is not None
                    batch.hold.release()

    asyncio.run(main())
    assert ran == [0, 1]
    assert (guard.spent, guard.held, guard.holds()) == (1, 0, [])


def test_repr_of_a_batch(hyper3d: sg.Hyper3D) -> None:
    """A batch's repr shows progress, spending, what is held and what was skipped."""
    guard = sg.SpendGuard(hyper3d)
    batch = guard.batch(range(7), 2, partial=True)
    next(batch)
    next(batch)
    assert repr(batch) == "<Batch 1/5 items done, 2 credits spent, 8 held, 2 skipped>"
    batch.close()
