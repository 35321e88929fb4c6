"""The one engine: exact money in any decimal context, every hold owned, one 402 rule,
the budget reserved under every policy, decoration mistakes, and account identity."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import functools
import itertools
import logging
import pickle
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

H3D_BALANCE = "GET /api/v2/check_balance"
_ids = itertools.count()


class Wallet:
    """An in-memory provider with a balance that can be changed or made to fail."""

    name, unit = "wallet", "credits"

    def __init__(self, balance: int | str = 10) -> None:
        self.balance = Decimal(balance)
        self.account_id = f"wallet:engine:{next(_ids)}"
        self.lookups = 0
        self.failing = False

    def fetch_balance(self) -> Decimal:
        self.lookups += 1
        if self.failing:
            raise sg.BalanceUnavailable("503 after retries", provider=self.name, status=503)
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.fetch_balance(), self.unit, "remote")


def _guard(balance: int | str = 10, **options: Any) -> sg.SpendGuard:
    options.setdefault("clock", FakeClock())
    options.setdefault("ttl", 3600)
    return sg.SpendGuard(Wallet(balance), **options)


def _payment_required() -> requests.HTTPError:
    response = requests.Response()
    response.status_code = 402
    return requests.HTTPError("402 Payment Required", response=response)


@pytest.fixture
def low_precision() -> Iterator[decimal.Context]:
    """The application's decimal context at 3 digits, with Inexact and Rounded trapped."""
    with decimal.localcontext() as context:
        context.prec = 3
        context.traps[decimal.Inexact] = True
        context.traps[decimal.Rounded] = True
        yield context


# -- 1. the caller's decimal context never leaks in ------------------------------------


def test_a_low_precision_context_never_admits_beyond_the_balance(
    low_precision: decimal.Context,
) -> None:
    """At prec=3 with traps set, a Hyper3D balance of 12.35 stays 12.35: 12.4 is refused,
    12.35 admitted, and nothing raises Inexact or Rounded."""
    with (
        ProviderSimulator(hyper3d_credits="12.35") as sim,
        sg.Hyper3D(sim.api_key, base_url=sim.url) as provider,
    ):
        guard = sg.SpendGuard(provider)
        check = guard.check("12.4")
        assert not check.sufficient
        assert check.available == Decimal("12.35")
        assert check.shortfall == Decimal("0.05")
        with pytest.raises(sg.InsufficientCredits):
            guard.require("12.4")
        with guard.spend("12.35") as hold:
            assert hold.amount == Decimal("12.35")
        assert guard.spent == Decimal("12.35")


def test_a_low_precision_context_never_poisons_the_amount_cache() -> None:
    """An amount first converted under prec=2 is exact when converted again later."""
    text = "7.123456789012345"
    with decimal.localcontext() as context:
        context.prec = 2
        assert sg.SpendGuard(Wallet(100), clock=FakeClock()).check(text).required == Decimal(text)
    assert _guard(100).check(text).required == Decimal(text)


def test_async_decisions_ignore_the_callers_context(low_precision: decimal.Context) -> None:
    """The async twin: acheck and a decorated coroutine decide exactly at prec=3."""
    guard = _guard("12.35")

    @guard(cost="12.34")
    async def generate() -> str:
        return "ok"

    async def main() -> None:
        assert not (await guard.acheck("12.36")).sufficient
        assert await generate() == "ok"

    asyncio.run(main())
    assert guard.spent == Decimal("12.34")


def test_amounts_have_no_trailing_zeros() -> None:
    """Amounts and totals are tidy: 110.0 reads as 110, 1.50 as 1.5."""
    guard = _guard(1000)
    with guard.spend("110.0") as hold:
        assert str(hold.amount) == "110"
    hold.settle("1.50")
    assert str(guard.spent) == "110"
    assert str(guard.check("0.50").required) == "0.5"


# -- 2. every hold has an owner ----------------------------------------------------------


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_listener_raising_baseexception_strands_nothing(error: type[BaseException]) -> None:
    """A listener that raises KeyboardInterrupt or SystemExit after the hold was taken:
    the decorated call never ran and holds nothing; the same for spend()."""

    def listener(decision: sg.Decision) -> None:
        raise error

    guard = _guard(10, on_decision=listener)

    @guard(cost=4)
    def generate() -> None:
        pytest.fail("the call must not run")

    with pytest.raises(error):
        generate()
    assert (guard.held, guard.spent) == (0, 0)
    with pytest.raises(error), guard.spend(4):
        pytest.fail("the block must not run")
    assert (guard.held, guard.spent) == (0, 0)
    assert guard.holds() == []


def test_a_listener_raising_in_a_coroutine_strands_nothing() -> None:
    """The async twin of a listener raising KeyboardInterrupt."""

    def listener(decision: sg.Decision) -> None:
        raise KeyboardInterrupt

    guard = _guard(10, on_decision=listener)

    @guard(cost=4)
    async def generate() -> None:
        pytest.fail("the call must not run")

    async def main() -> None:
        with pytest.raises(KeyboardInterrupt):
            await generate()
        with pytest.raises(KeyboardInterrupt):
            async with guard.spend(4):
                pytest.fail("the block must not run")

    asyncio.run(main())
    assert (guard.held, guard.spent) == (0, 0)


def test_amap_ends_the_holds_of_tasks_it_never_started() -> None:
    """A cost callable that raises mid-way: tasks created but not started hold nothing."""
    guard = _guard(100)

    def cost(item: int) -> int:
        if item == 5:
            raise ValueError("no price")
        return 1

    async def work(item: int) -> int:
        await asyncio.sleep(0.01)
        return item

    with pytest.raises(ValueError, match="no price"):
        asyncio.run(guard.amap(work, range(10), cost=cost, workers=8))
    assert guard.held == 0
    assert guard.holds() == []


def test_a_progress_bar_raising_at_the_end_still_ends_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch's hold ends before the bar closes, so a bar that raises leaves nothing."""
    from spendguard import _batch

    class Bar:
        def advance(self, spent: Decimal, held: Decimal, available: Decimal) -> None:
            pass

        def close(self) -> None:
            raise RuntimeError("terminal gone")

    monkeypatch.setattr(_batch, "bar_factory", lambda: lambda *args: Bar())
    guard = _guard(10)
    batch = guard.batch(range(4), 1, progress=True)
    with pytest.raises(RuntimeError, match="terminal gone"), batch:
        next(batch)
    assert (guard.held, guard.spent) == (0, 1)


def test_one_spend_entered_by_two_tasks_at_once_holds_twice() -> None:
    """Two tasks in one Spend at once: each has its own hold, each ends its own."""
    guard = _guard(10)
    block = guard.spend(1)

    async def task(started: asyncio.Event, go: asyncio.Event) -> sg.Hold:
        async with block as hold:
            started.set()
            await go.wait()
            assert sg.current_hold() is hold
        return hold

    async def main() -> None:
        one, two, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(task(one, go)), asyncio.create_task(task(two, go))]
        await one.wait()
        await two.wait()
        assert guard.held == 2
        go.set()
        first, second = await asyncio.gather(*tasks)
        assert first is not second

    asyncio.run(main())
    assert (guard.held, guard.spent) == (0, 2)


def test_ending_a_hold_twice_is_a_no_op_never_an_error() -> None:
    """settle, release and expiry in any order: only the first counts."""
    clock = FakeClock()
    guard = _guard(10, clock=clock, hold_ttl=5)
    with guard.spend(3) as hold:
        clock.advance(6)
        assert guard.holds() == []
        hold.release()
        hold.settle()
        hold.release()
    assert (guard.held, guard.spent, hold.state) == (0, 0, "released")


def test_a_block_ended_in_full_reads_settled_and_stays_so() -> None:
    """A block that ended in full is settled at once for every reader; settling or
    releasing it afterwards changes nothing."""
    guard = _guard(10)
    with guard.spend(3) as hold:
        assert hold.state == "held"
    assert (hold.state, hold.charged, hold.held) == ("settled", 3, 0)
    assert guard.holds() == []
    hold.release()
    hold.settle(1)
    assert (hold.state, hold.charged, guard.spent, guard.held) == ("settled", 3, 3, 0)


def test_blocks_entered_through_exit_stacks_end_their_own_holds() -> None:
    """contextlib.ExitStack enters and leaves from frames of its own: each block still
    ends its own hold, and current_hold() inside finds it."""
    guard = _guard(10)
    outer = guard.spend(1)
    with outer as first:
        with contextlib.ExitStack() as stack:
            second = stack.enter_context(guard.spend(2, label="stacked"))
            assert sg.current_hold() is second
            with outer as third:
                assert sg.current_hold() is third
            assert third.state == "settled"
            assert sg.current_hold() is second
            assert (first.state, second.state) == ("held", "held")
        assert (first.state, second.state) == ("held", "settled")
        assert sg.current_hold() is first
    assert (guard.spent, guard.held) == (4, 0)

    entered: list[sg.Hold] = []

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            entered.append(await stack.enter_async_context(guard.spend(1)))
            assert sg.current_hold() is entered[0]
            raise _payment_required()

    with pytest.raises(requests.HTTPError):
        asyncio.run(main())
    hold = entered[0]
    assert (hold.state, guard.spent, guard.held) == ("released", 4, 0)


def test_one_spend_left_through_exit_stacks_in_two_threads_ends_each_threads_own() -> None:
    """Two threads enter one Spend through exit stacks; the first to leave ends its own
    hold, not the other thread's newer one."""
    guard = _guard(100)
    block = guard.spend(1)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    holds: dict[str, sg.Hold] = {}
    seen: dict[str, object] = {}

    def first() -> None:
        with contextlib.ExitStack() as stack:
            holds["first"] = stack.enter_context(block)
            first_in.set()
            second_in.wait(timeout=10)
        first_out.set()

    def second() -> None:
        first_in.wait(timeout=10)
        with contextlib.ExitStack() as stack:
            holds["second"] = stack.enter_context(block)
            second_in.set()
            first_out.wait(timeout=10)
            seen["current"] = sg.current_hold()
            seen["states"] = (holds["first"].state, holds["second"].state)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {"current": holds["second"], "states": ("settled", "held")}
    assert (guard.spent, guard.held, guard.holds()) == (2, 0, [])


def test_one_spend_shared_by_threads_gives_each_its_own_hold() -> None:
    """Eight threads in one Spend at once: each sees and ends its own hold."""
    guard = _guard(100)
    block = guard.spend(1)
    inside = threading.Barrier(8)
    seen: list[bool] = []

    def work() -> None:
        with block as hold:
            inside.wait(timeout=10)
            seen.append(sg.current_hold() is hold)
            inside.wait(timeout=10)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] * 8
    assert (guard.spent, guard.held) == (8, 0)


def test_decorated_calls_ended_in_bulk_by_racing_threads_count_exactly() -> None:
    """Three guards on one account, 6 threads of decorated calls (every 7th answered 402)
    and 4 threads reading totals: queued calls are ended in bulk by whichever thread gets
    there, runs of different guards interleave, and every credit is counted once."""
    clock = FakeClock()
    wallet = Wallet(10**6)
    guards = [sg.SpendGuard(wallet, clock=clock, ttl=3600, budget=10**5) for _ in range(3)]
    calls = 1_500  # per thread: several times the queue's bulk-ending length
    done = threading.Event()

    def caller(index: int) -> None:
        guard = guards[index % 3]

        @guard(cost=index + 1)
        def generate(i: int) -> None:
            if i % 7 == 0:
                raise _payment_required()

        for i in range(calls):
            with contextlib.suppress(requests.HTTPError):
                generate(i)
            if i % 7 == 0:
                # A 402 drops the snapshot: look it up again now and then, as a
                # decision would.
                guard.available()

    def reader() -> None:
        while not done.is_set():
            for guard in guards:
                assert guard.held >= 0
                assert guard.spent >= 0

    readers = [threading.Thread(target=reader) for _ in range(4)]
    callers = [threading.Thread(target=caller, args=(index,)) for index in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside the bulk ending, not only around it
    try:
        for thread in readers + callers:
            thread.start()
        for thread in callers:
            thread.join()
    finally:
        done.set()
        sys.setswitchinterval(interval)
    for thread in readers:
        thread.join()
    charged_calls = calls - len(range(0, calls, 7))
    expected = [(index + 1 + index + 4) * charged_calls for index in range(3)]
    assert [guard.spent for guard in guards] == expected
    assert [guard.held for guard in guards] == [0, 0, 0]


def test_leaving_a_spend_never_entered_is_an_error() -> None:
    """An exit with no open block is a RuntimeError naming the Spend; nothing changes."""
    guard = _guard(10)
    block = guard.spend(2)
    with pytest.raises(RuntimeError, match="left more times than it was entered"):
        block.__exit__(None, None, None)
    with block:
        pass
    with pytest.raises(RuntimeError, match="left more times"):
        block.__exit__(None, None, None)
    assert (guard.spent, guard.held) == (2, 0)


# -- 3. the budget is reserved under every policy ---------------------------------------


def test_allow_policy_still_reserves_the_budget_across_threads() -> None:
    """budget=1, cost 1, the provider failing: of 8 threads only one runs."""
    wallet = Wallet(100)
    wallet.failing = True
    guard = sg.SpendGuard(wallet, budget=1, on_unavailable="allow")
    ran, refused = [], []
    barrier = threading.Barrier(8)

    @guard(cost=1)
    def generate() -> None:
        ran.append(1)
        barrier.wait(timeout=0.5)

    def worker() -> None:
        try:
            generate()
        except sg.InsufficientCredits as exc:
            refused.append(exc)
        except threading.BrokenBarrierError:
            pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(ran), len(refused)) == (1, 7)
    assert all("budget" in str(exc) for exc in refused)
    assert guard.spent == 1


def test_allow_policy_still_reserves_the_budget_across_tasks() -> None:
    """The async twin: 8 tasks, budget 1, provider failing: one runs."""
    wallet = Wallet(100)
    wallet.failing = True
    guard = sg.SpendGuard(wallet, budget=1, on_unavailable="allow")

    @guard(cost=1)
    async def generate() -> None:
        await asyncio.sleep(0.01)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(generate() for _ in range(8)), return_exceptions=True)

    results = asyncio.run(main())
    assert sum(result is None for result in results) == 1
    assert all(isinstance(r, sg.InsufficientCredits) for r in results if r is not None)


# -- 4. one meaning of a 402 ---------------------------------------------------------------


def test_a_402_releases_and_gives_the_budget_back() -> None:
    """Two 402s from a decorated function charge nothing; the next good call runs."""
    guard = _guard(10, budget="1.0")
    answers = iter([_payment_required(), _payment_required(), None])

    @guard(cost=1)
    def generate() -> str:
        error = next(answers)
        if error is not None:
            raise error
        return "ok"

    for _ in range(2):
        with pytest.raises(requests.HTTPError):
            generate()
    assert (guard.spent, guard.held) == (0, 0)
    assert generate() == "ok"
    assert guard.spent == 1


def test_a_402_in_a_spend_block_releases() -> None:
    """The same rule in `with guard.spend()`: the block's hold is released."""
    guard = _guard(10)
    with pytest.raises(requests.HTTPError), guard.spend(2):
        raise _payment_required()
    assert (guard.spent, guard.held) == (0, 0)


def test_other_exceptions_count_as_charged() -> None:
    """Any other exception from a call that started counts its cost in full."""
    guard = _guard(10)

    @guard(cost=2)
    def generate() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        generate()
    assert guard.spent == 2


def test_a_decorated_function_settles_the_price_it_learned() -> None:
    """current_hold() inside the call settles the real price; the call adds nothing."""
    guard = _guard(10)

    @guard(cost=3)
    def generate() -> None:
        hold = sg.current_hold()
        assert hold is not None
        assert (hold.amount, hold.state) == (3, "held")
        hold.settle("1.25")

    generate()
    assert (guard.spent, guard.held) == (Decimal("1.25"), 0)
    assert sg.current_hold() is None


def test_a_coroutine_settles_or_releases_the_price_it_learned() -> None:
    """The async twin: settle in one call, release in another, even in a nested helper."""
    guard = _guard(10)

    async def answer(price: str | None) -> None:
        hold = sg.current_hold()
        assert hold is not None
        if price is None:
            hold.release()
        else:
            hold.settle(price)

    @guard(cost=3)
    async def generate(price: str | None) -> None:
        await asyncio.sleep(0)
        await answer(price)

    async def main() -> None:
        await generate("0.5")
        await generate(None)

    asyncio.run(main())
    assert (guard.spent, guard.held) == (Decimal("0.5"), 0)


def test_current_hold_is_the_innermost() -> None:
    """A spend block inside a call, and a call inside a spend block: the innermost wins."""
    guard = _guard(10)
    seen: list[sg.Hold | None] = []

    @guard(cost=1)
    def inner() -> None:
        seen.append(sg.current_hold())

    with guard.spend(2) as block:
        assert sg.current_hold() is block
        inner()
        assert sg.current_hold() is block
    assert seen[0] is not None
    assert seen[0] is not block
    assert seen[0].amount == 1
    assert sg.current_hold() is None


# -- 5. decoration -------------------------------------------------------------------------


class AsyncCallable:
    """An object whose __call__ is a coroutine function."""

    def __init__(self) -> None:
        self.held_inside: Decimal | None = None
        self.guard: sg.SpendGuard | None = None

    async def __call__(self, fail: bool = False) -> str:
        assert self.guard is not None
        self.held_inside = self.guard.held
        if fail:
            raise _payment_required()
        return "done"


def test_an_object_with_async_call_is_guarded_as_a_coroutine() -> None:
    """Its cost is held while its body runs, and a 402 inside releases it."""
    guard = _guard(10)
    target = AsyncCallable()
    target.guard = guard
    guarded = guard(cost=2)(target)
    assert asyncio.iscoroutinefunction(guarded)
    assert asyncio.run(guarded()) == "done"
    assert target.held_inside == 2
    assert guard.spent == 2
    with pytest.raises(requests.HTTPError):
        asyncio.run(guard(cost=2)(target)(fail=True))
    assert (guard.spent, guard.held) == (2, 0)


def test_a_partial_of_a_coroutine_function_is_guarded_as_one() -> None:
    """functools.partial of an async def holds while it runs."""
    guard = _guard(10)
    seen = []

    async def generate(prompt: str, tier: str) -> str:
        seen.append(guard.held)
        return f"{prompt}:{tier}"

    guarded = guard(cost=1)(functools.partial(generate, tier="Sketch"))
    assert asyncio.run(guarded("cat")) == "cat:Sketch"
    assert seen == [1]


class Jobs:
    """Methods of every kind, guarded at module level so that they pickle by reference."""

    guard = sg.SpendGuard(Wallet(10**6), clock=FakeClock(), ttl=3600)

    @guard(cost=1)
    def method(self, prompt: str) -> str:
        return prompt

    @guard(cost=1)
    @classmethod
    def from_class(cls, prompt: str) -> str:
        return prompt

    @guard(cost=1)
    @staticmethod
    def static(prompt: str) -> str:
        return prompt


@Jobs.guard(cost=1)
def module_function(prompt: str) -> str:
    """A guarded module-level function."""
    return prompt


@pytest.mark.parametrize(
    "target", [module_function, Jobs.from_class, Jobs.static, Jobs().method, Jobs.method]
)
def test_guarded_callables_pickle_as_their_twins_do(target: Any) -> None:
    """Functions, methods, classmethods and staticmethods pickle by reference and still
    run guarded after a round trip (what a process pool needs)."""
    copy = pickle.loads(pickle.dumps(target))
    if target is Jobs.method:
        assert copy(Jobs(), "x") == "x"
    else:
        assert copy("x") == "x"


def test_classmethods_and_staticmethods_keep_their_signatures() -> None:
    """inspect sees the original parameters through the guard."""
    import inspect

    assert list(inspect.signature(Jobs.from_class).parameters) == ["prompt"]
    assert list(inspect.signature(Jobs.static).parameters) == ["prompt"]
    assert Jobs.static.__name__ == "static"


def test_guard_without_parentheses_names_the_right_call() -> None:
    """@guard without (cost=...) is a TypeError that shows the right spelling."""
    guard = _guard()
    with pytest.raises(TypeError, match=r"@guard\(cost=\.\.\.\)"):

        @guard  # type: ignore[call-overload]
        def generate() -> None: ...


def test_a_provider_class_instead_of_an_instance_is_refused_at_once() -> None:
    """SpendGuard(sg.Hyper3D) names the instance to pass."""
    with pytest.raises(TypeError, match=r"Hyper3D\(\.\.\.\)"):
        sg.SpendGuard(sg.Hyper3D)  # type: ignore[arg-type]


# -- 6. one account, one identity -------------------------------------------------------


def test_spellings_of_one_url_are_one_account(sim: ProviderSimulator) -> None:
    """127.0.0.1, localhost, an upper-case scheme and a trailing dot segment: one account,
    so holds through one spelling block the others."""
    port = sim.url.rsplit(":", 1)[1]
    urls = [
        f"http://127.0.0.1:{port}",
        f"http://localhost:{port}",
        f"HTTP://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/.",
        f"http://[::1]:{port}/",
    ]
    providers = [sg.Hyper3D(sim.api_key, base_url=url) for url in urls]
    assert len({provider.account_id for provider in providers}) == 1
    guards = [sg.SpendGuard(provider) for provider in providers[:4]]
    with guards[0].spend(10):
        for guard in guards[1:]:
            assert not guard.check(1).sufficient
    for provider in providers:
        provider.close()


def test_two_clocks_on_one_account_are_refused() -> None:
    """A second guard on a live account with another clock is a ConfigurationError."""
    wallet = Wallet(10)
    first = sg.SpendGuard(wallet, clock=FakeClock())
    with pytest.raises(sg.ConfigurationError, match="clock"):
        sg.SpendGuard(wallet, clock=FakeClock())
    assert sg.SpendGuard(wallet, clock=first._engine.clock).check(1).sufficient


class Reentrant(Wallet):
    """A provider that asks its own guard for a decision during the lookup."""

    guard: sg.SpendGuard | None = None

    def fetch_balance(self) -> Decimal:
        assert self.guard is not None
        self.guard.check(1)
        return super().fetch_balance()


def test_a_provider_calling_back_into_its_guard_raises_instead_of_hanging() -> None:
    """The inner decision raises ReentryError; the outer lookup fails cleanly."""
    wallet = Reentrant(10)
    guard = sg.SpendGuard(wallet)
    wallet.guard = guard
    with pytest.raises(sg.ReentryError, match="called back into the guard"):
        guard.check(1)


def test_a_log_handler_deciding_during_a_lookup_never_hangs() -> None:
    """A handler on 'spendguard' that calls the guard while a lookup logs: no deadlock."""
    guard = _guard(10)
    errors: list[BaseException] = []

    class Deciding(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                guard.check(1)
            except sg.ReentryError as exc:
                errors.append(exc)

    logger = logging.getLogger("spendguard")
    handler = Deciding(level=logging.DEBUG)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        done = threading.Event()

        def decide() -> None:
            guard.require(1)
            done.set()

        thread = threading.Thread(target=decide, daemon=True)
        thread.start()
        assert done.wait(10), "a decision hung"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
