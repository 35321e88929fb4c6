"""The pytest plugin's fixtures and the per-test reset, run in pytester sessions."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from importlib.metadata import entry_points

import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator, reset

pytestmark = pytest.mark.timeout(60)

LEAK = """
import pytest

import spendguard as sg
from spendguard.testing import ProviderSimulator

KEPT = []  # keeps the first test's guard alive, as a module-level guard would be


@pytest.fixture(scope="module")
def sim():
    with ProviderSimulator(hyper3d_credits="10") as simulator:
        yield simulator


def test_first(sim):
    guard = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url), ttl=600)
    KEPT.append(guard)
    assert guard.check(1).sufficient
    sim.hyper3d_balance = "0"


def test_second(sim):
    guard = sg.SpendGuard(sg.Hyper3D(sim.api_key, base_url=sim.url), ttl=600)
    assert not guard.check(1).sufficient
    assert not KEPT[0].check(1).sufficient
    assert sim.count("GET /api/v2/check_balance") == 3
"""


def test_entry_point_names_the_plugin() -> None:
    """The distribution registers the plugin under pytest's ``pytest11`` group."""
    (entry,) = (e for e in entry_points(group="pytest11") if e.name == "spendguard")
    assert entry.value == "spendguard._pytest_plugin"


def test_import_spendguard_does_not_import_pytest() -> None:
    """Neither ``import spendguard`` nor ``spendguard.testing`` imports pytest."""
    code = "import sys, spendguard, spendguard.testing; print('pytest' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"


def test_balance_does_not_leak_between_tests(pytester: pytest.Pytester) -> None:
    """A balance cached in one test is looked up again in the next."""
    pytester.makepyfile(test_leak=LEAK)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_without_the_plugin_the_balance_leaks(pytester: pytest.Pytester) -> None:
    """With the plugin off, the second test decides from the first test's cached balance."""
    pytester.makepyfile(test_leak=LEAK)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:spendguard")
    result.assert_outcomes(passed=1, failed=1)


def test_fixtures_wire_guards_and_environment(pytester: pytest.Pytester) -> None:
    """The simulator fixture sets the environment; the guard fixtures decide against it."""
    pytester.makepyfile(
        test_fixtures="""
        import os

        import pytest

        import spendguard as sg


        def test_environment(spendguard_simulator):
            assert os.environ["SPENDGUARD_HYPER3D_URL"] == spendguard_simulator.url
            assert "RODIN_API_KEY" not in os.environ
            guard = sg.SpendGuard(sg.Hyper3D())
            assert guard.balance() == 10


        def test_hyper3d_guard(hyper3d_guard, spendguard_simulator):
            spendguard_simulator.hyper3d_balance = "0.5"
            with pytest.raises(sg.InsufficientCredits):
                hyper3d_guard.require(1)
            assert spendguard_simulator.count("GET /api/v2/check_balance") == 1


        def test_orthogonal_guard(orthogonal_guard, spendguard_simulator):
            assert orthogonal_guard.check("0.10").sufficient
            assert spendguard_simulator.count("POST /v1/credits/check") == 1
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_environment_is_restored(pytester: pytest.Pytester) -> None:
    """The provider variables are gone once the simulator fixture is torn down."""
    pytester.makepyfile(
        test_env="""
        import os


        def test_uses(spendguard_simulator):
            assert os.environ["HYPER3D_API_KEY"] == spendguard_simulator.api_key


        def test_after():
            assert "HYPER3D_API_KEY" not in os.environ
            assert "SPENDGUARD_ORTHOGONAL_URL" not in os.environ
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_reset_forgets_cached_balances() -> None:
    """After reset(), new and existing guards look the balance up again."""
    with ProviderSimulator(hyper3d_credits="3") as sim:
        provider = sg.Hyper3D(sim.api_key, base_url=sim.url)
        before = sg.SpendGuard(provider, ttl=600)
        assert before.available() == Decimal(3)
        sim.hyper3d_balance = "1"
        assert sg.SpendGuard(provider, ttl=600).available() == Decimal(3)
        reset()
        assert sg.SpendGuard(provider, ttl=600).available() == Decimal(1)
        assert before.available() == Decimal(1)
        assert sim.count("GET /api/v2/check_balance") == 3
