"""OpenTelemetry metrics from decisions, read back through the SDK's in-memory reader."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import spendguard as sg
from spendguard.otel import OTelMetrics
from spendguard.testing import ProviderSimulator

pytest.importorskip("opentelemetry.metrics")
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export")

H3D = "GET /api/v2/check_balance"


@pytest.fixture
def meter() -> Iterator[tuple[Any, Any]]:
    """An SDK meter provider and the in-memory reader attached to it."""
    memory = sdk_export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[memory])
    yield provider, memory
    provider.shutdown()


def _points(reader: Any, name: str) -> list[Any]:
    """Every data point of the metric called ``name``."""
    data = reader.get_metrics_data()
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_decisions_are_counted_by_outcome_and_source(
    sim: ProviderSimulator, hyper3d: sg.Hyper3D, meter: tuple[Any, Any]
) -> None:
    """Admitted, refused and fallback decisions land in the counter with their attributes."""
    provider, memory = meter
    guard = sg.SpendGuard(
        hyper3d, on_unavailable="allow", on_decision=OTelMetrics(provider), name="renders"
    )
    guard.check(1)
    guard.check(2)
    with pytest.raises(sg.InsufficientCredits):
        guard.require("12.5")
    guard.invalidate()
    sim.fail(H3D, status=503, times=3)
    guard.check(1)

    counts = {
        (p.attributes["spendguard.outcome"], p.attributes["spendguard.source"]): p.value
        for p in _points(memory, "spendguard.decisions")
    }
    assert counts == {
        ("admitted", "remote"): 1,
        ("admitted", "cache"): 1,
        ("refused", "cache"): 1,
        ("admitted", "fallback"): 1,
    }
    attributes = _points(memory, "spendguard.decisions")[0].attributes
    assert attributes["spendguard.provider"] == "hyper3d"
    assert attributes["spendguard.guard"] == "renders"
    assert attributes["spendguard.unit"] == "credits"
    fallback = next(
        p for p in _points(memory, "spendguard.decisions") if "spendguard.error" in p.attributes
    )
    assert fallback.attributes["spendguard.error"] == "BalanceUnavailable"
    (shortfall,) = _points(memory, "spendguard.shortfall")
    assert (shortfall.count, shortfall.sum) == (1, 2.5)
    ages = _points(memory, "spendguard.balance.age")
    assert sum(p.count for p in ages) == 4


def test_shadow_mode_is_its_own_outcome(hyper3d: sg.Hyper3D, meter: tuple[Any, Any]) -> None:
    """A call a shadow-mode guard would have refused counts as "shadow", with its shortfall."""
    provider, memory = meter
    guard = sg.SpendGuard(hyper3d, enforce=False, on_decision=OTelMetrics(provider))

    @guard(cost=11)
    def generate() -> str:
        return "ran"

    assert generate() == "ran"
    (point,) = _points(memory, "spendguard.decisions")
    assert point.attributes["spendguard.outcome"] == "shadow"
    (shortfall,) = _points(memory, "spendguard.shortfall")
    assert shortfall.sum == 1


def test_prefix_names_the_instruments(meter: tuple[Any, Any]) -> None:
    """prefix= replaces "spendguard" in every instrument name."""
    provider, memory = meter
    metrics = OTelMetrics(provider, prefix="billing.guard")
    metrics(
        sg.Decision(
            allowed=False,
            sufficient=False,
            required=Decimal(3),
            available=Decimal(1),
            shortfall=Decimal(2),
            source="cache",
            age=1.5,
            provider="orthogonal",
            guard="search",
            unit="USD",
        )
    )
    names = {
        metric.name
        for resource in memory.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert names == {
        "billing.guard.decisions",
        "billing.guard.shortfall",
        "billing.guard.balance.age",
    }
    assert repr(metrics) == "OTelMetrics(prefix='billing.guard')"


@pytest.mark.parametrize("prefix", ["", "1abc", "has space", "x" * 300])
def test_bad_prefix_is_refused(prefix: str) -> None:
    """An invalid instrument prefix is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError, match="prefix"):
        OTelMetrics(prefix=prefix)


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, building OTelMetrics says which pip install to run."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'spendguard-preflight\[otel\]'"):
        OTelMetrics()
