"""Price tables: Hyper3D Rodin's published prices and Orthogonal's per-endpoint prices."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

import spendguard as sg
from spendguard.pricing import (
    RODIN_PRICES,
    RodinPrices,
    UnknownPrice,
    parse_orthogonal_price,
    rodin_cost,
)
from spendguard.testing import ProviderSimulator

from .conftest import FakeClock

DETAILS = "POST /v1/details"

PUBLISHED = [
    ("Sketch", "0.5"),
    ("Regular", "0.5"),
    ("Gen-2", "0.5"),
    ("Gen-2.5-Extreme-Low", "0.5"),
    ("Gen-2.5-Low", "0.5"),
    ("Gen-2.5-Medium", "0.5"),
    ("Gen-2.5-High", "0.5"),
    ("Gen-2.5-Extreme-High", "1.0"),
]


@pytest.fixture
def orthogonal_clocked(sim: ProviderSimulator, clock: FakeClock) -> Iterator[sg.Orthogonal]:
    """An Orthogonal provider on the simulator whose price cache runs on a fake clock."""
    provider = sg.Orthogonal(sim.api_key, base_url=sim.url, timeout=2.0, clock=clock)
    try:
        yield provider
    finally:
        provider.close()


@pytest.mark.parametrize(("tier", "price"), PUBLISHED)
def test_every_published_tier(tier: str, price: str) -> None:
    """Each published tier costs its published price."""
    assert rodin_cost(tier) == Decimal(price)


@pytest.mark.parametrize(("tier", "price"), PUBLISHED)
def test_highpack_adds_one_credit(tier: str, price: str) -> None:
    """HighPack adds 1 credit to any tier."""
    assert rodin_cost(tier, ["HighPack"]) == Decimal(price) + 1


def test_default_tier_is_regular() -> None:
    """Without arguments a generation is priced as the API's default tier, Regular."""
    assert rodin_cost() == Decimal("0.5")


def test_addon_counts_once() -> None:
    """An addon named twice (or given as a bare string) is counted once."""
    assert rodin_cost("Regular", ["HighPack", "HighPack"]) == Decimal("1.5")
    assert rodin_cost("Regular", "HighPack") == Decimal("1.5")


@pytest.mark.parametrize("tier", ["Detail", "Smooth", "regular", "Gen-3"])
def test_unpriced_tier_lists_known_tiers(tier: str) -> None:
    """Detail, Smooth and typos raise UnknownPrice, a ConfigurationError naming the priced tiers."""
    with pytest.raises(UnknownPrice) as info:
        rodin_cost(tier)
    message = str(info.value)
    assert all(name in message for name, _ in PUBLISHED)
    assert repr(tier) in message
    assert isinstance(info.value, sg.ConfigurationError)
    assert (info.value.kind, info.value.name) == ("tier", tier)


def test_unpublished_tier_says_why() -> None:
    """For Detail the message says the price is not published and how to give one."""
    with pytest.raises(UnknownPrice, match=r"does not publish.*with_tiers"):
        rodin_cost("Detail")


def test_unknown_addon_lists_known_addons() -> None:
    """An unknown addon raises UnknownPrice naming HighPack."""
    with pytest.raises(UnknownPrice, match=r"addon 'LowPack'.*HighPack"):
        rodin_cost("Regular", ["LowPack"])


def test_override_table_prices_unpublished_tier() -> None:
    """A table extended with Detail prices it; the published table is unchanged."""
    mine = RODIN_PRICES.with_tiers(Detail="0.5", Smooth=Decimal("0.75"))
    assert rodin_cost("Detail", ["HighPack"], prices=mine) == Decimal("1.5")
    assert rodin_cost("Smooth", prices=mine) == Decimal("0.75")
    assert "Detail" not in RODIN_PRICES.tiers


def test_with_tiers_accepts_a_mapping() -> None:
    """Tier names that are not identifiers can be repriced through a mapping."""
    mine = RODIN_PRICES.with_tiers({"Gen-2.5-High": "0.75"}).with_addons(Turbo=2)
    assert rodin_cost("Gen-2.5-High", ["Turbo"], prices=mine) == Decimal("2.75")


def test_custom_table_from_scratch() -> None:
    """A table built from plain mappings prices only what it lists."""
    table = RodinPrices({"Only": "3"})
    assert table.cost("Only") == 3
    with pytest.raises(UnknownPrice, match="Only"):
        table.cost("Regular")


@pytest.mark.parametrize("bad", ["-1", "free", float("nan"), None])
def test_table_rejects_bad_prices(bad: object) -> None:
    """A negative, non-numeric or missing price is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError):
        RODIN_PRICES.with_tiers(Detail=bad)


def test_table_is_frozen_and_comparable() -> None:
    """Tables are immutable values: equal when their prices are, usable as dict keys."""
    assert RODIN_PRICES.with_tiers() == RODIN_PRICES
    assert hash(RODIN_PRICES.with_tiers()) == hash(RODIN_PRICES)
    with pytest.raises(AttributeError):
        RODIN_PRICES.tiers = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        RODIN_PRICES.tiers["Regular"] = Decimal(0)  # type: ignore[index]


def test_unknown_price_pickles() -> None:
    """UnknownPrice survives pickling with its data and message."""
    error = UnknownPrice(kind="tier", name="Detail", known=["Regular"])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.name, copy.known, str(copy)) == (
        "tier",
        "Detail",
        ("Regular",),
        str(error),
    )


@pytest.mark.parametrize(
    "value", ["$0.03", "0.03", Decimal("0.03"), " $0.03 ", 0.03, "$0.030"], ids=repr
)
def test_orthogonal_price_shapes(value: object) -> None:
    """ "$0.03", "0.03" and the JSON number 0.03 all read as three cents."""
    assert parse_orthogonal_price(value) == Decimal("0.03")


@pytest.mark.parametrize("value", ["dynamic", " Dynamic ", None])
def test_orthogonal_dynamic_price(value: object) -> None:
    """ "dynamic" or a missing price is None: known only after the call."""
    assert parse_orthogonal_price(value) is None


@pytest.mark.parametrize(
    "value", ["free", "", "-$0.03", "$0.03.1", True, [], {}, Decimal("NaN")], ids=repr
)
def test_orthogonal_garbage_price(value: object) -> None:
    """Anything else is a ProviderError."""
    with pytest.raises(sg.ProviderError, match="malformed price"):
        parse_orthogonal_price(value)


@pytest.mark.parametrize(
    ("api", "path", "price"),
    [
        ("sim-search", "/search", Decimal("0.01")),
        ("sim-enrich", "/enrich", Decimal("0.10")),
        ("sim-scrape", "/scrape", Decimal("0.03")),
        ("sim-micro", "/ping", Decimal("0.001")),
        ("sim-dynamic", "/run", None),
    ],
)
def test_orthogonal_price_over_http(
    orthogonal: sg.Orthogonal, api: str, path: str, price: Decimal | None
) -> None:
    """Orthogonal.price reads /v1/details for every shape the simulator serves."""
    assert orthogonal.price(api, path) == price


def test_orthogonal_missing_price_is_dynamic(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """An endpoint without a price field is priced None."""
    sim.fail(DETAILS, status=200, body={"success": True, "endpoint": {"isPayable": True}})
    assert orthogonal.price("sim-search", "/search") is None


def test_orthogonal_garbage_price_over_http(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """An unreadable price is a ProviderError and is not cached."""
    sim.fail(DETAILS, status=200, body={"success": True, "endpoint": {"price": "ask us"}})
    with pytest.raises(sg.ProviderError, match="malformed price"):
        orthogonal.price("sim-search", "/search")
    assert orthogonal.price("sim-search", "/search") == Decimal("0.01")


def test_orthogonal_details_without_endpoint(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """An answer without an endpoint object is a ProviderError."""
    sim.fail(DETAILS, status=200, body={"success": True})
    with pytest.raises(sg.ProviderError, match="'endpoint' is null"):
        orthogonal.price("sim-search", "/search")


def test_orthogonal_price_is_cached(sim: ProviderSimulator, orthogonal: sg.Orthogonal) -> None:
    """Repeated lookups of one endpoint ask the provider once."""
    for _ in range(3):
        assert orthogonal.price("sim-search", "/search") == Decimal("0.01")
        assert orthogonal.price("sim-dynamic", "/run") is None
    assert sim.count(DETAILS) == 2


def test_orthogonal_price_cache_expires(
    sim: ProviderSimulator, orthogonal_clocked: sg.Orthogonal, clock: FakeClock
) -> None:
    """After price_ttl (an hour by default) the price is looked up again."""
    orthogonal_clocked.price("sim-search", "/search")
    clock.advance(3599)
    orthogonal_clocked.price("sim-search", "/search")
    assert sim.count(DETAILS) == 1
    sim.orthogonal_prices["sim-search", "/search"] = "$0.02"
    clock.advance(2)
    assert orthogonal_clocked.price("sim-search", "/search") == Decimal("0.02")
    assert sim.count(DETAILS) == 2


def test_orthogonal_unknown_endpoint(sim: ProviderSimulator, orthogonal: sg.Orthogonal) -> None:
    """An endpoint the provider does not know is a ProviderError, asked again next time."""
    for _ in range(2):
        with pytest.raises(sg.ProviderError, match="404"):
            orthogonal.price("nope", "/nothing")
    assert sim.count(DETAILS) == 2


def test_orthogonal_price_burst_asks_once(
    sim: ProviderSimulator, orthogonal: sg.Orthogonal
) -> None:
    """Threads pricing one endpoint at once make a single lookup."""
    sim.slow(DETAILS, 0.2)
    barrier = threading.Barrier(10)
    prices: list[Decimal | None] = []

    def look() -> None:
        barrier.wait()
        prices.append(orthogonal.price("sim-enrich", "/enrich"))

    threads = [threading.Thread(target=look) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert prices == [Decimal("0.10")] * 10
    assert sim.count(DETAILS) == 1


def test_orthogonal_rejects_bad_price_ttl(sim: ProviderSimulator) -> None:
    """A negative price_ttl is a ConfigurationError."""
    with pytest.raises(sg.ConfigurationError, match="price_ttl"):
        sg.Orthogonal(sim.api_key, base_url=sim.url, price_ttl=-1)
