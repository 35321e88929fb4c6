"""SpendGuard over real HTTP: caching, holds, floors, budgets, policies and the decorator."""

from __future__ import annotations

import inspect
import logging
import threading
from decimal import Decimal

import pytest
import requests

import spendguard as sg
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

H3D_BALANCE = "GET /api/v2/check_balance"
CHECK = "POST /v1/credits/check"


def test_refuses_before_the_call_starts(hyper3d: sg.Hyper3D) -> None:
    """A call the account cannot pay for never starts and says what is missing."""
    guard = sg.SpendGuard(hyper3d)
    ran = []

    @guard(cost=11)
    def generate() -> None:
        ran.append(1)

    with pytest.raises(sg.InsufficientCredits) as info:
        generate()
    assert ran == []
    error = info.value
    assert (error.required, error.available, error.shortfall) == (Decimal(11), 10, 1)
    assert (error.unit, error.provider) == ("credits", "hyper3d")
    assert str(error) == "hyper3d: need 11 credits, 10 available, short by 1"


def test_fresh_cache_makes_no_request(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """While the snapshot is fresh, decisions make no HTTP request at all."""
    guard = sg.SpendGuard(hyper3d, ttl=60)

    @guard(cost="0.5")
    def generate(i: int) -> int:
        return i

    assert [generate(i) for i in range(10)] == list(range(10))
    assert guard.check(1).source == "cache"
    assert sim.count() == 1


def test_stale_cache_is_looked_up_again(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, clock: FakeClock
) -> None:
    """Past the TTL the next decision looks the balance up again."""
    guard = sg.SpendGuard(hyper3d, ttl=30, clock=clock)
    assert guard.check(1).source == "remote"
    clock.advance(29)
    assert guard.check(1).source == "cache"
    clock.advance(2)
    assert guard.check(1).source == "remote"
    assert sim.count(H3D_BALANCE) == 2


def test_spending_is_debited_until_the_next_lookup(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A finished call is taken off the cached balance: never over-promise."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=4)
    def generate() -> None:
        sim.hyper3d_balance -= 4

    generate()
    generate()
    assert guard.balance() == 2
    with pytest.raises(sg.InsufficientCredits):
        generate()
    assert sim.count(H3D_BALANCE) == 1


def test_failed_call_still_counts_as_charged(hyper3d: sg.Hyper3D) -> None:
    """A call that raises is assumed charged (the provider may have billed it)."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=3)
    def generate() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        generate()
    assert guard.balance() == 7
    assert guard.held == 0


def test_top_up_is_seen_before_refusing(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, clock: FakeClock
) -> None:
    """A short snapshot older than refresh_interval is looked up again before refusing."""
    guard = sg.SpendGuard(hyper3d, ttl=60, refresh_interval=1.0, clock=clock)
    assert not guard.check(20).sufficient
    sim.hyper3d_balance = 50
    assert not guard.check(20).sufficient  # too recent to look again
    clock.advance(1.5)
    check = guard.check(20)
    assert check.sufficient
    assert check.source == "remote"
    assert sim.count(H3D_BALANCE) == 2


def test_shared_snapshot_across_guards(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """Guards on one account share one snapshot and one set of holds."""
    first = sg.SpendGuard(hyper3d)
    second = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url))
    with first.spend(6):
        assert second.available() == 4
        with pytest.raises(sg.InsufficientCredits):
            second.require(5)
    assert sim.count(H3D_BALANCE) == 1
    second.provider.close()  # type: ignore[attr-defined]


def test_check_and_require(hyper3d: sg.Hyper3D) -> None:
    """check() reports a shortfall; require() raises it; neither holds anything."""
    guard = sg.SpendGuard(hyper3d)
    check = guard.check("12.5")
    assert check._replace(age=None) == sg.Check(
        False, Decimal("12.5"), Decimal(10), Decimal("2.5"), "credits", "remote"
    )
    assert check.age is not None
    assert 0 <= check.age < 1
    assert str(check) == "insufficient: need 12.5 credits, 10 available, short by 2.5 (remote)"
    assert guard.require(10).sufficient
    with pytest.raises(sg.InsufficientCredits):
        guard.require("10.01")
    assert guard.held == 0
    assert guard.available() == 10


def test_floor_is_never_spent(hyper3d: sg.Hyper3D) -> None:
    """The floor is kept out of what can be spent."""
    guard = sg.SpendGuard(hyper3d, floor=3)
    assert guard.available() == 7
    assert guard.check(7).sufficient
    assert not guard.check("7.5").sufficient


def test_budget_caps_spending(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """A budget caps settled spending whatever the account holds; a release gives back."""
    guard = sg.SpendGuard(hyper3d, budget=2)
    with guard.spend(1) as hold:
        hold.release()
    with guard.spend("1.5"):
        pass
    assert guard.spent == Decimal("1.5")
    with pytest.raises(sg.InsufficientCredits, match="budget of 2 credits") as info:
        guard.require(1)
    assert info.value.available == Decimal("0.5")
    assert guard.check("0.5").sufficient
    other = sg.SpendGuard(hyper3d)
    assert other.check(5).sufficient


def test_spend_holds_while_the_block_runs(hyper3d: sg.Hyper3D) -> None:
    """Inside the block the amount is held; leaving settles it in full."""
    guard = sg.SpendGuard(hyper3d)
    with guard.spend(4) as hold:
        assert hold.state == "held"
        assert guard.held == 4
        assert guard.available() == 6
        assert repr(hold) == "<Hold 4 credits held>"
    assert hold.state == "settled"
    assert hold.charged == 4
    assert guard.held == 0
    assert guard.available() == 6


def test_settle_records_the_real_cost(hyper3d: sg.Hyper3D) -> None:
    """settle(actual) debits the real cost; later calls change nothing."""
    guard = sg.SpendGuard(hyper3d)
    with guard.spend(4) as hold:
        hold.settle("1.5")
        hold.settle(3)
        hold.release()
    assert repr(hold) == "<Hold 4 credits settled at 1.5 credits>"
    assert guard.balance() == Decimal("8.5")


def test_release_gives_everything_back(hyper3d: sg.Hyper3D) -> None:
    """release() returns the hold when nothing was charged."""
    guard = sg.SpendGuard(hyper3d)
    with guard.spend(4) as hold:
        hold.release()
    assert hold.state == "released"
    assert guard.balance() == 10
    with pytest.raises(ValueError, match="actual"):
        guard.spend(1).__enter__().settle(-1)


def test_spend_refuses_the_block(hyper3d: sg.Hyper3D) -> None:
    """A block that cannot be paid for never runs."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(sg.InsufficientCredits), guard.spend(11):
        pytest.fail("the block ran")
    assert guard.held == 0


def test_one_spend_object_entered_twice_holds_twice(hyper3d: sg.Hyper3D) -> None:
    """Entering one spend() again while it is active holds anew; each exit ends its own."""
    guard = sg.SpendGuard(hyper3d)
    block = guard.spend(1)
    with block as outer:
        with block as inner:
            assert inner is not outer
            assert guard.held == 2
        assert (outer.state, inner.state) == ("held", "settled")
        assert guard.held == 1
    assert (guard.held, guard.spent) == (0, 2)


@pytest.mark.parametrize("cost", [-1, "-0.5", "abc", float("nan"), "inf"])
def test_bad_costs_are_value_errors(hyper3d: sg.Hyper3D, cost: object) -> None:
    """Negative, NaN, infinite and non-numeric costs are ValueErrors at decoration time."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(ValueError, match="cost"):
        guard(cost=cost)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount"):
        guard.spend(cost)  # type: ignore[arg-type]


def test_cost_callable_gets_the_call_arguments(hyper3d: sg.Hyper3D) -> None:
    """A callable cost receives exactly the function's arguments; a bad result stops the call."""
    guard = sg.SpendGuard(hyper3d)
    seen = []

    def price(prompt: str, *, n: int = 1) -> str:
        seen.append((prompt, n))
        return str(n * Decimal("0.5"))

    @guard(cost=price)
    def generate(prompt: str, *, n: int = 1) -> str:
        return prompt * n

    assert generate("a", n=3) == "aaa"
    assert seen == [("a", 3)]
    assert guard.balance() == Decimal("8.5")

    @guard(cost=lambda: -1)
    def broken() -> None:
        pytest.fail("ran")

    with pytest.raises(ValueError, match="cost must not be negative"):
        broken()


def test_methods_classmethods_and_staticmethods(hyper3d: sg.Hyper3D) -> None:
    """Cost callables see self for methods and cls for classmethods; staticmethods neither."""
    guard = sg.SpendGuard(hyper3d)
    seen: list[object] = []

    def price(*args: object) -> int:
        seen.append(args)
        return 1

    class Job:
        @guard(cost=price)
        def run(self, x: int) -> int:
            return x

        @guard(cost=price)
        @classmethod
        def build(cls, x: int) -> int:
            return x

        @guard(cost=price)
        @staticmethod
        def plain(x: int) -> int:
            return x

    job = Job()
    assert (job.run(1), Job.build(2), Job.plain(3), job.plain(4)) == (1, 2, 3, 4)
    assert seen == [(job, 1), (Job, 2), (3,), (4,)]
    assert guard.balance() == 6


def test_decorator_keeps_metadata(hyper3d: sg.Hyper3D) -> None:
    """Name, docstring, signature and coroutine-ness survive decoration."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=1)
    def generate(prompt: str, tier: str = "Regular") -> str:
        """Make a model."""
        return prompt

    @guard(cost=1)
    async def agenerate(prompt: str) -> str:
        return prompt

    assert generate.__name__ == "generate"
    assert generate.__doc__ == "Make a model."
    assert inspect.signature(generate) == inspect.signature(generate.__wrapped__)
    assert list(inspect.signature(generate).parameters) == ["prompt", "tier"]
    assert not inspect.iscoroutinefunction(generate)
    assert inspect.iscoroutinefunction(agenerate)


def test_generators_are_refused(hyper3d: sg.Hyper3D) -> None:
    """Guarding a generator function is a TypeError pointing at spend()."""
    guard = sg.SpendGuard(hyper3d)
    with pytest.raises(TypeError, match=r"guard\.spend"):

        @guard(cost=1)
        def items() -> object:
            yield 1


def test_payment_required_invalidates_the_cache(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A 402 raised by the guarded call releases its hold (nothing was charged) and drops
    the cached balance."""
    guard = sg.SpendGuard(hyper3d)

    @guard(cost=1)
    def generate() -> None:
        response = requests.Response()
        response.status_code = 402
        raise requests.HTTPError("402 Payment Required", response=response)

    with pytest.raises(requests.HTTPError):
        generate()
    assert guard.check(1).source == "remote"
    assert sim.count(H3D_BALANCE) == 2
    assert (guard.spent, guard.held) == (0, 0)


def test_unavailable_raises_by_default(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """With on_unavailable='raise' the call does not run when the balance cannot be had."""
    guard = sg.SpendGuard(hyper3d)
    sim.fail(H3D_BALANCE, status=503, times=3)
    ran = []

    @guard(cost=1)
    def generate() -> None:
        ran.append(1)

    with pytest.raises(sg.BalanceUnavailable):
        generate()
    assert ran == []
    assert guard.held == 0


def test_unavailable_allow_lets_the_call_through(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, spendguard_logs: pytest.LogCaptureFixture
) -> None:
    """'allow' runs the call, logs a WARNING, reports 'fallback' and still debits the cost."""
    guard = sg.SpendGuard(hyper3d, on_unavailable="allow")
    sim.fail(H3D_BALANCE, status=503, times=6)
    check = guard.check(1)
    assert (check.sufficient, check.source, check.available, check.shortfall) == (
        True,
        "fallback",
        0,
        0,
    )

    @guard(cost=2)
    def generate() -> str:
        assert guard.held == 2
        sim.hyper3d_balance -= 2
        return "ok"

    assert generate() == "ok"
    warnings = [r for r in spendguard_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "balance unavailable" in warnings[0].getMessage()
    assert guard.spent == 2
    assert guard.held == 0
    assert guard.balance() == 8


@pytest.mark.parametrize("status", [401, 200])
def test_auth_and_malformed_errors_always_raise(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, status: int
) -> None:
    """Even under 'allow', a bad key or a malformed answer stops the call."""
    guard = sg.SpendGuard(hyper3d, on_unavailable="allow")
    sim.fail(H3D_BALANCE, status=status, body="<html>login</html>")
    with pytest.raises(sg.ProviderError):
        guard.require(1)


def test_orthogonal_guard_asks_the_remote_check(sim: ProviderSimulator) -> None:
    """On a stale cache an Orthogonal guard asks for amount + holds + floor in cents."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, units_per_dollar=100_000)
    guard = sg.SpendGuard(provider, floor="0.50")
    other = sg.SpendGuard(provider, ttl=0)
    with guard.spend("1.00"):
        assert other.check("0.25").sufficient
    asked = [r.json()["amountCents"] for r in sim.requests if r.route == CHECK]
    assert asked == [150_000, 125_000]
    provider.close()


def test_orthogonal_remote_refusal_refuses(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """A daily-limit style refusal from the check endpoint refuses the call."""
    guard = sg.SpendGuard(orthogonal)
    sim.fail(CHECK, status=200, body={"sufficient": False, "balanceCents": 500_000})
    with pytest.raises(sg.InsufficientCredits, match="provider reported"):
        guard.require("0.01")


def test_spending_during_a_lookup_is_not_lost() -> None:
    """A call that finishes while a lookup is in flight stays debited after it."""
    started, release = threading.Event(), threading.Event()

    class SlowWallet:
        name, unit, account_id = "wallet", "credits", "wallet:slow-lookup"
        calls = 0

        def fetch_balance(self) -> Decimal:
            SlowWallet.calls += 1
            if SlowWallet.calls == 2:
                started.set()
                assert release.wait(5)
            return Decimal(100)

        def check(self, amount: Decimal) -> sg.Check:
            return sg.Check.of(amount, self.fetch_balance(), self.unit, "remote")

    clock = FakeClock()
    guard = sg.SpendGuard(SlowWallet(), ttl=10, clock=clock)
    hold = guard.spend(30).__enter__()
    clock.advance(11)
    looker = threading.Thread(target=guard.balance)
    looker.start()
    assert started.wait(5)
    hold.settle()
    release.set()
    looker.join()
    assert guard.balance() == 70


def test_options_are_validated(hyper3d: sg.Hyper3D) -> None:
    """Bad options are ConfigurationErrors (ValueErrors); a non-provider is a TypeError."""
    for options in (
        {"ttl": -1},
        {"refresh_interval": "1"},
        {"floor": -1},
        {"budget": "x"},
        {"on_unavailable": "ignore"},
    ):
        with pytest.raises(sg.ConfigurationError):
            sg.SpendGuard(hyper3d, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Provider"):
        sg.SpendGuard(object())  # type: ignore[arg-type]


def test_repr_shows_settings_not_the_key(hyper3d: sg.Hyper3D) -> None:
    """The guard's repr shows its provider and options and at most 4 key characters."""
    guard = sg.SpendGuard(hyper3d, ttl=5, floor="1.5", budget=3)
    text = repr(guard)
    assert "ttl=5.0" in text
    assert "floor='1.5'" in text
    assert "budget='3'" in text
    assert "sim-test-key" not in text
