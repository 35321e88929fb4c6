"""Shared fixtures: a clean environment, a loopback simulator, providers and a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

pytest_plugins = ["pytester"]

ENV_VARS = (
    "ORTHOGONAL_API_KEY",
    "HYPER3D_API_KEY",
    "RODIN_API_KEY",
    "SPENDGUARD_ORTHOGONAL_URL",
    "SPENDGUARD_HYPER3D_URL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never depend on the machine's keys or URLs."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    """A provider simulator on a free loopback port: $5.00 on Orthogonal, 10 Hyper3D credits."""
    with ProviderSimulator(orthogonal_usd="5.00", hyper3d_credits="10") as simulator:
        yield simulator


@pytest.fixture
def hyper3d(sim: ProviderSimulator) -> Iterator[sg.Hyper3D]:
    """A Hyper3D provider pointed at the simulator."""
    with sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2.0) as provider:
        yield provider


@pytest.fixture
def orthogonal(sim: ProviderSimulator) -> Iterator[sg.Orthogonal]:
    """An Orthogonal provider pointed at the simulator (scale learned on first use)."""
    with sg.Orthogonal(sim.api_key, base_url=sim.url, timeout=2.0) as provider:
        yield provider


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()


@pytest.fixture
def spendguard_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture everything the 'spendguard' logger says."""
    caplog.set_level(logging.DEBUG, logger="spendguard")
    return caplog
