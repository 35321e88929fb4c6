"""What a call costs before it is made: Hyper3D Rodin's price table and Orthogonal's prices.

Price tables are data. :data:`RODIN_PRICES` is the table Hyper3D publishes; extend it for
tiers it does not price, instead of editing code::

    from spendguard.pricing import RODIN_PRICES, rodin_cost

    rodin_cost("Gen-2.5-High", ["HighPack"])  # Decimal("1.5")
    mine = RODIN_PRICES.with_tiers(Detail="0.5", Smooth="0.5")
    rodin_cost("Detail", prices=mine)  # Decimal("0.5")

Orthogonal publishes each endpoint's price through ``POST /v1/details``;
:meth:`spendguard.Orthogonal.price` asks it (and caches the answer), and
:func:`parse_orthogonal_price` reads the shapes that price comes in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import attrs

from ._errors import ConfigurationError, ProviderError
from ._money import MAX_MAGNITUDE, UnusableNumber, parse_dollars, parse_number, to_amount

__all__ = [
    "RODIN_PRICES",
    "RODIN_UNPUBLISHED_TIERS",
    "RodinPrices",
    "UnknownPrice",
    "parse_orthogonal_price",
    "rodin_cost",
]

RODIN_UNPUBLISHED_TIERS = ("Detail", "Smooth")
"""Rodin tiers that exist but whose price Hyper3D does not publish: give one to use them."""


class UnknownPrice(ConfigurationError):
    """A price table has no price for a tier or addon, so the call's cost is unknown.

    It is a :class:`~spendguard.ConfigurationError` (and so a ``ValueError``): the fix is a
    price, e.g. ``RODIN_PRICES.with_tiers(Detail="0.5")``.

    It is also what a guarded Session raises, before sending anything, for a billable
    request whose price cannot be read (``kind="request"``: a streamed or unreadable
    body, a dynamic price without ``max_cost``); ``reason`` then says why.

    Attributes:
        kind: ``"tier"``, ``"addon"`` or ``"request"``.
        name: The name that has no price (for a request, ``"METHOD /path"``).
        known: The names the table does price, sorted (empty for a request).
        reason: Why a request cannot be priced; ``None`` for a tier or an addon.
    """

    def __init__(
        self, *, kind: str, name: str, known: Iterable[str] = (), reason: str | None = None
    ) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        self.reason = reason
        if kind == "request":
            super().__init__(f"cannot price {name}: {reason or 'its price is unknown'}")
            return
        if kind == "tier" and name in RODIN_UNPUBLISHED_TIERS:
            why = f"Hyper3D does not publish the price of the {name!r} tier"
        else:
            why = f"unknown Rodin {kind} {name!r}"
        fix = "with_tiers" if kind == "tier" else "with_addons"
        super().__init__(
            f"{why}; priced {kind}s: {', '.join(self.known) or 'none'}. Give it a price "
            f"with RODIN_PRICES.{fix}(...), passed as rodin_cost(..., prices=...) or "
            f"GuardedSession(guard, rodin_prices=...)."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unknown_price, (self.kind, self.name, self.known, self.reason))


def _rebuild_unknown_price(
    kind: str, name: str, known: tuple[str, ...], reason: str | None = None
) -> UnknownPrice:
    return UnknownPrice(kind=kind, name=name, known=known, reason=reason)


class _PriceMap(Mapping[str, Decimal]):
    """An immutable, hashable name-to-price mapping (every price a non-negative Decimal)."""

    __slots__ = ("_items",)

    def __init__(self, prices: Mapping[str, object]) -> None:
        items: dict[str, Decimal] = {}
        for name, price in prices.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigurationError(f"a price name must be a non-empty str, got {name!r}")
            try:
                items[name.strip()] = to_amount(price, name=f"the price of {name!r}")
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(str(exc)) from None
        self._items = items

    def __getitem__(self, name: str) -> Decimal:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {str(v)!r}" for k, v in self._items.items()) + "}"


def _price_map(value: Mapping[str, object]) -> _PriceMap:
    return value if isinstance(value, _PriceMap) else _PriceMap(value)


@attrs.frozen
class RodinPrices:
    """A Hyper3D Rodin price table, in credits: a price per tier and per addon.

    Build one from mappings of names to amounts (``int``, ``Decimal``, numeric ``str``
    or ``float``), or extend :data:`RODIN_PRICES` with :meth:`with_tiers` and
    :meth:`with_addons`. Names are case-sensitive, as the API's are.

    Attributes:
        tiers: Tier name to the price of one generation.
        addons: Addon name to what it adds to the tier's price.

    Raises:
        ConfigurationError: A name is empty or a price is not a non-negative amount.
    """

    tiers: Mapping[str, Decimal] = attrs.field(converter=_price_map)
    addons: Mapping[str, Decimal] = attrs.field(converter=_price_map, factory=dict)

    def with_tiers(
        self, prices: Mapping[str, object] | None = None, /, **named: object
    ) -> RodinPrices:
        """A copy with tiers added or repriced.

        Tier names such as ``"Gen-2.5-High"`` are not Python identifiers: pass those in a
        mapping, ``with_tiers({"Gen-2.5-High": "0.75"})``; others may be keywords,
        ``with_tiers(Detail="0.5")``.
        """
        return RodinPrices({**self.tiers, **(prices or {}), **named}, self.addons)

    def with_addons(
        self, prices: Mapping[str, object] | None = None, /, **named: object
    ) -> RodinPrices:
        """A copy with addons added or repriced, like :meth:`with_tiers`."""
        return RodinPrices(self.tiers, {**self.addons, **(prices or {}), **named})

    def cost(self, tier: str = "Regular", addons: Iterable[str] = ()) -> Decimal:
        """What one generation of ``tier`` with ``addons`` costs; see :func:`rodin_cost`."""
        name = str(tier).strip()
        if name not in self.tiers:
            raise UnknownPrice(kind="tier", name=name, known=self.tiers)
        total = self.tiers[name]
        for addon in _distinct(addons):
            if addon not in self.addons:
                raise UnknownPrice(kind="addon", name=addon, known=self.addons)
            total += self.addons[addon]
        return total


def _distinct(addons: Iterable[str]) -> list[str]:
    if isinstance(addons, str):
        addons = [addons]
    names: list[str] = []
    for addon in addons:
        name = str(addon).strip()
        if name and name not in names:
            names.append(name)
    return names


_HALF = Decimal("0.5")

RODIN_PRICES = RodinPrices(
    tiers={
        "Sketch": _HALF,
        "Regular": _HALF,
        "Gen-2": _HALF,
        "Gen-2.5-Extreme-Low": _HALF,
        "Gen-2.5-Low": _HALF,
        "Gen-2.5-Medium": _HALF,
        "Gen-2.5-High": _HALF,
        "Gen-2.5-Extreme-High": Decimal("1.0"),
    },
    addons={"HighPack": Decimal("1.0")},
)
"""Hyper3D's published prices in credits. ``Detail`` and ``Smooth`` are left out on
purpose: their prices are not published (see :data:`RODIN_UNPUBLISHED_TIERS`)."""


def rodin_cost(
    tier: str = "Regular", addons: Iterable[str] = (), *, prices: RodinPrices | None = None
) -> Decimal:
    """What one Rodin generation costs, in credits, before it is submitted.

    Args:
        tier: The ``tier`` form field; ``"Regular"`` is the API's default.
        addons: The ``addons`` values, e.g. ``["HighPack"]``; each counts once.
        prices: The table to use; :data:`RODIN_PRICES` by default.

    Returns:
        The tier's price plus each addon's.

    Raises:
        UnknownPrice: The table has no price for the tier (``Detail``, ``Smooth``, a typo)
            or for an addon; the message lists the priced names.
    """
    return (prices or RODIN_PRICES).cost(tier, addons)


def parse_orthogonal_price(value: object) -> Decimal | None:
    """Read the ``price`` of an Orthogonal endpoint or call, in US dollars.

    ``"$0.03"``, ``"0.03"`` and the JSON number ``0.03`` (decoded as ``Decimal``) all mean
    three cents; ``"dynamic"`` or a missing price (``None``) mean the price is known only
    after the call.

    Returns:
        The price, or ``None`` when it is dynamic.

    Raises:
        ProviderError: Anything else: a negative amount, a boolean, an unreadable string,
            a number no price can be (``1e999999999``).
    """
    if value is None:
        return None
    try:
        if isinstance(value, str) and not isinstance(value, UnusableNumber):
            if value.strip().lower() == "dynamic":
                return None
            price = parse_dollars(value)
        elif isinstance(value, float):
            price = parse_number(Decimal(repr(value)))
        else:
            price = parse_number(value)
    except (ValueError, ArithmeticError) as exc:
        raise ProviderError(f"malformed price: {exc}", provider="orthogonal") from None
    if price < 0 or price > MAX_MAGNITUDE:
        raise ProviderError(f"malformed price: {price} is not a price", provider="orthogonal")
    return price
