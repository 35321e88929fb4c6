"""The pytest plugin: a running provider simulator, guards wired to it, a clean slate per test.

pytest loads it through the ``pytest11`` entry point wherever spendguard is installed
(``-p no:spendguard`` turns it off). Before every test, and before that test's fixtures are
set up, it calls `spendguard.testing.reset`, so a guard built in one test never decides from
a balance cached in another. Fixtures:

- ``spendguard_simulator``: a started `spendguard.testing.ProviderSimulator` ($5.00 on
  Orthogonal, 10 Hyper3D credits), with ``HYPER3D_API_KEY``, ``ORTHOGONAL_API_KEY``,
  ``SPENDGUARD_HYPER3D_URL`` and ``SPENDGUARD_ORTHOGONAL_URL`` pointing at it for the test,
  so that ``sg.Hyper3D()`` and ``sg.Orthogonal()`` in the code under test reach it.
- ``hyper3d_guard`` and ``orthogonal_guard``: a `spendguard.SpendGuard` with default options
  over that provider on the simulator.

Loading the plugin imports pytest and the package, nothing else: `spendguard.testing` is
imported when the first test starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._guard import SpendGuard
    from .testing import ProviderSimulator

_ENV_KEYS = ("HYPER3D_API_KEY", "ORTHOGONAL_API_KEY")
_ENV_URLS = ("SPENDGUARD_HYPER3D_URL", "SPENDGUARD_ORTHOGONAL_URL")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Forget every account's cached balance and holds before the test's fixtures run."""
    from .testing import reset

    reset()


@pytest.fixture
def spendguard_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderSimulator]:
    """A running `ProviderSimulator` that ``sg.Hyper3D()`` and ``sg.Orthogonal()`` reach.

    Starts with $5.00 on Orthogonal and 10 Hyper3D credits; set ``hyper3d_balance`` or
    ``orthogonal_balance`` to change them. The provider environment variables point at it
    for the test (``RODIN_API_KEY`` is removed) and are restored afterwards.
    """
    from .testing import ProviderSimulator

    with ProviderSimulator() as simulator:
        for name in _ENV_KEYS:
            monkeypatch.setenv(name, simulator.api_key)
        for name in _ENV_URLS:
            monkeypatch.setenv(name, simulator.url)
        monkeypatch.delenv("RODIN_API_KEY", raising=False)
        yield simulator


@pytest.fixture
def hyper3d_guard(spendguard_simulator: ProviderSimulator) -> Iterator[SpendGuard]:
    """A `SpendGuard` with default options over `Hyper3D` on ``spendguard_simulator``."""
    from . import Hyper3D, SpendGuard

    with Hyper3D(spendguard_simulator.api_key, base_url=spendguard_simulator.url) as provider:
        yield SpendGuard(provider)


@pytest.fixture
def orthogonal_guard(spendguard_simulator: ProviderSimulator) -> Iterator[SpendGuard]:
    """A `SpendGuard` with default options over `Orthogonal` on ``spendguard_simulator``."""
    from . import Orthogonal, SpendGuard

    with Orthogonal(spendguard_simulator.api_key, base_url=spendguard_simulator.url) as provider:
        yield SpendGuard(provider)
