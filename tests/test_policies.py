"""Failure policies, shadow mode, decision hooks, counters and logging."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

H3D_BALANCE = "GET /api/v2/check_balance"


def test_stale_policy_uses_the_last_balance(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, clock: FakeClock
) -> None:
    """'stale' decides from the last balance, minus spending since, while young enough."""
    guard = sg.SpendGuard(hyper3d, ttl=10, on_unavailable="stale", max_stale=60, clock=clock)
    with guard.spend(4):
        pass
    clock.advance(30)
    sim.fail(H3D_BALANCE, status=503, times=100)
    check = guard.check(5)
    assert (check.sufficient, check.source, check.available, check.age) == (
        True,
        "fallback",
        6,
        30,
    )
    assert not guard.check(7).sufficient
    with pytest.raises(sg.InsufficientCredits):
        guard.require(7)


def test_stale_policy_gives_up_past_max_stale(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, clock: FakeClock
) -> None:
    """Past max_stale, or with no balance ever seen, 'stale' raises."""
    guard = sg.SpendGuard(hyper3d, ttl=10, on_unavailable="stale", max_stale=60, clock=clock)
    sim.fail(H3D_BALANCE, status=503, times=3)
    with pytest.raises(sg.BalanceUnavailable):
        guard.check(1)
    assert guard.check(1).source == "remote"
    clock.advance(61)
    sim.fail(H3D_BALANCE, status=503, times=3)
    with pytest.raises(sg.BalanceUnavailable):
        guard.check(1)


def test_invalidated_balance_still_serves_stale(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, clock: FakeClock
) -> None:
    """invalidate() forces a lookup but keeps the last balance for the 'stale' policy."""
    guard = sg.SpendGuard(hyper3d, on_unavailable="stale", clock=clock)
    guard.check(1)
    guard.invalidate()
    sim.fail(H3D_BALANCE, status=503, times=3)
    assert guard.check(1).source == "fallback"


def test_shadow_mode_never_blocks(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, spendguard_logs: pytest.LogCaptureFixture
) -> None:
    """enforce=False lets a call through that it would refuse, and says so."""
    decisions: list[sg.Decision] = []
    guard = sg.SpendGuard(hyper3d, enforce=False, on_decision=decisions.append)
    ran = []

    @guard(cost=12)
    def generate() -> None:
        ran.append(1)

    generate()
    assert ran == [1]
    assert decisions[-1].enforced is False
    assert decisions[-1].allowed is True
    assert decisions[-1].sufficient is False
    assert decisions[-1].shortfall == 2
    assert guard.stats.refused == 1
    assert any("would refuse 12 credits" in r.getMessage() for r in spendguard_logs.records)
    assert not guard.check(1).sufficient


def test_shadow_mode_survives_an_outage(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """In shadow mode even a provider error does not block the call."""
    guard = sg.SpendGuard(hyper3d, enforce=False)
    sim.fail(H3D_BALANCE, status=401)

    @guard(cost=1)
    def generate() -> str:
        return "ran"

    assert generate() == "ran"
    assert guard.stats.errors == {"AuthenticationError": 1}


def test_decision_hook_receives_frozen_records(hyper3d: sg.Hyper3D) -> None:
    """Every decision reaches the listeners as a frozen record without any key."""
    seen: list[sg.Decision] = []
    guard = sg.SpendGuard(hyper3d, on_decision=[seen.append], name="renders")
    guard.check(3)
    with pytest.raises(sg.InsufficientCredits):
        guard.require(11)
    first, second = seen
    assert (first.allowed, first.sufficient, first.source, first.guard, first.provider) == (
        True,
        True,
        "remote",
        "renders",
        "hyper3d",
    )
    assert (second.allowed, second.shortfall, second.source) == (False, 1, "cache")
    assert first.unit == "credits"
    assert first.age is not None
    with pytest.raises(AttributeError):
        first.allowed = False  # type: ignore[misc]
    assert "sim-test-key" not in repr(seen)


def test_a_failing_hook_never_breaks_the_call(
    hyper3d: sg.Hyper3D, spendguard_logs: pytest.LogCaptureFixture
) -> None:
    """An exception in a listener is logged and the guarded call goes on."""
    calls = []

    def broken(decision: sg.Decision) -> None:
        raise RuntimeError("listener bug")

    guard = sg.SpendGuard(hyper3d, on_decision=[broken, calls.append])

    @guard(cost=1)
    def generate() -> str:
        return "ok"

    assert generate() == "ok"
    assert len(calls) == 1
    assert any("listener" in r.getMessage() for r in spendguard_logs.records)


def test_non_callable_listener_is_refused(hyper3d: sg.Hyper3D) -> None:
    """on_decision must be callables."""
    with pytest.raises(TypeError, match="callable"):
        sg.SpendGuard(hyper3d, on_decision=[1])  # type: ignore[list-item]


def test_stats_count_every_kind_of_decision(sim: ProviderSimulator, hyper3d: sg.Hyper3D) -> None:
    """Counters add up: decisions, admitted, refused, cache hits, lookups, errors."""
    guard = sg.SpendGuard(hyper3d, on_unavailable="allow", refresh_interval=0)

    @guard(cost=1)
    def generate() -> None:
        pass

    for _ in range(5):
        generate()
    assert not guard.check(100).sufficient
    guard.invalidate()
    sim.fail(H3D_BALANCE, status=503, times=3)
    generate()
    stats = guard.stats
    assert stats == sg.Stats(
        decisions=7,
        admitted=6,
        refused=1,
        cache_hits=4,
        lookups=3,
        fallbacks=1,
        errors={"BalanceUnavailable": 1},
    )


def test_log_levels(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, spendguard_logs: pytest.LogCaptureFixture
) -> None:
    """DEBUG for admissions and lookups, INFO for refusals, WARNING for fallbacks."""
    guard = sg.SpendGuard(hyper3d, on_unavailable="allow")
    guard.balance()
    guard.check(1)
    guard.check(20)
    guard.invalidate()
    sim.fail(H3D_BALANCE, status=503, times=3)
    guard.check(1)
    levels = {r.levelno for r in spendguard_logs.records if r.name == "spendguard"}
    assert {logging.DEBUG, logging.INFO, logging.WARNING} <= levels
    refusal = next(r for r in spendguard_logs.records if r.levelno == logging.INFO)
    assert "refused 20 credits, 10 available, short by 10" in refusal.getMessage()


def test_check_reports_age(hyper3d: sg.Hyper3D, clock: FakeClock) -> None:
    """A cached decision reports how old its balance is."""
    guard = sg.SpendGuard(hyper3d, clock=clock)
    assert guard.check(1).age == 0
    clock.advance(12.5)
    assert guard.check(1).age == 12.5


def test_retries_option_bounds_attempts(sim: ProviderSimulator) -> None:
    """retries= sets how many times a lookup is retried."""
    sim.fail(H3D_BALANCE, status=503, times=10)
    with (
        sg.Hyper3D(sim.api_key, base_url=sim.url, retries=0) as provider,
        pytest.raises(sg.BalanceUnavailable),
    ):
        provider.fetch_balance()
    assert sim.count(H3D_BALANCE) == 1
    with pytest.raises(sg.ConfigurationError, match="retries"):
        sg.Hyper3D("key", retries=-1)


def test_max_stale_is_validated(hyper3d: sg.Hyper3D) -> None:
    """A negative max_stale is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError, match="max_stale"):
        sg.SpendGuard(hyper3d, on_unavailable="stale", max_stale=-1)
    assert sg.SpendGuard(hyper3d).balance() == Decimal(10)


def test_a_decision_that_raised_is_not_admitted(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D
) -> None:
    """A lookup failure under 'raise' counts as a decision, never as an admission."""
    guard = sg.SpendGuard(hyper3d)
    sim.fail(H3D_BALANCE, status=503, times=3)
    with pytest.raises(sg.BalanceUnavailable):
        guard.check(1)
    guard.check(1)
    stats = guard.stats
    assert (stats.decisions, stats.admitted, stats.refused) == (2, 1, 0)


def test_stale_fallback_logs_a_warning(
    sim: ProviderSimulator,
    hyper3d: sg.Hyper3D,
    clock: FakeClock,
    spendguard_logs: pytest.LogCaptureFixture,
) -> None:
    """Deciding from an old balance is a WARNING that says how old."""
    guard = sg.SpendGuard(hyper3d, ttl=1, on_unavailable="stale", clock=clock)
    guard.check(1)
    clock.advance(5)
    sim.fail(H3D_BALANCE, status=503, times=3)
    assert guard.check(1).source == "fallback"
    warnings = [r.getMessage() for r in spendguard_logs.records if r.levelno == logging.WARNING]
    assert any("balance of 5.0s ago" in w for w in warnings)
