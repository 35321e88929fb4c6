"""Statements in README.md that are not code blocks, checked against the code."""

from __future__ import annotations

import inspect
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

import spendguard as sg
from spendguard.pricing import RODIN_PRICES, UnknownPrice, rodin_cost
from spendguard.testing import ProviderSimulator

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _documented_parameters(call: str) -> list[str]:
    """``name=default`` and ``*`` items of a signature as README.md writes it."""
    match = re.search(re.escape(call) + r"\((api_key[^)]*)\)", README)
    assert match is not None, call
    return [item.strip() for item in " ".join(match[1].split()).split(",")]


def _real_parameters(cls: type) -> list[str]:
    items: list[str] = []
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in items:
            items.append("*")
        items.append(f"{parameter.name}={parameter.default!r}")
    return items


@pytest.mark.parametrize("cls", [sg.Orthogonal, sg.Hyper3D])
def test_provider_signatures_in_the_readme(cls: type) -> None:
    """The README lists every parameter of a provider, with its default, in order."""
    assert _documented_parameters(f"sg.{cls.__name__}") == _real_parameters(cls)


def test_unknown_price_names_both_places_a_table_goes(hyper3d: sg.Hyper3D) -> None:
    """UnknownPrice's advice works where it points: rodin_cost(prices=) and GuardedSession."""
    with pytest.raises(UnknownPrice) as caught:
        rodin_cost("Detail")
    message = str(caught.value)
    assert "rodin_cost(..., prices=...)" in message
    assert "GuardedSession(guard, rodin_prices=...)" in message
    mine = RODIN_PRICES.with_tiers(Detail="0.5")
    assert rodin_cost("Detail", prices=mine) == Decimal("0.5")
    with sg.GuardedSession(sg.SpendGuard(hyper3d), rodin_prices=mine) as session:
        assert isinstance(session, sg.GuardedSession)
    assert "sg.GuardedSession(guard, rodin_prices=RODIN_PRICES.with_tiers(" in README


def test_debug_logs_lookups_and_their_admissions(
    hyper3d: sg.Hyper3D, sim: ProviderSimulator, spendguard_logs: pytest.LogCaptureFixture
) -> None:
    """DEBUG logs each lookup and an admission decided by it; a cached admission logs nothing."""
    guard = sg.SpendGuard(hyper3d, ttl=60)

    @guard(cost=1)
    def generate() -> None:
        """A paid call."""

    generate()
    debug = [r.getMessage() for r in spendguard_logs.records if r.levelno == logging.DEBUG]
    assert any("GET /api/v2/check_balance -> HTTP 201" in m for m in debug), debug
    assert any("admitted 1 credit from remote" in m for m in debug), debug
    spendguard_logs.clear()
    generate()
    assert [r for r in spendguard_logs.records if r.name.startswith("spendguard")] == []
    assert sim.count("GET /api/v2/check_balance") == 1
