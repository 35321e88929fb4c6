"""The answer to "can we afford this?"."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, NamedTuple

from ._money import CONTEXT, format_amount

Source = Literal["cache", "remote", "fallback"]
"""Where a decision's balance came from: the cached snapshot, a lookup made for it, or the
failure policy (the provider was unavailable: ``"allow"`` let the call through, or
``"stale"`` judged it, either way, on the last snapshot)."""


class Check(NamedTuple):
    """A sufficiency decision, immutable.

    A named tuple rather than an attrs class: :meth:`SpendGuard.check` builds one on
    every call, and a tuple builds in about a third of the time. ``_replace`` makes a
    changed copy.

    Attributes:
        sufficient: Whether ``required`` fits in ``available``.
        required: The amount asked about, in ``unit``.
        available: What could be spent when the decision was made (balance minus holds,
            spending since the last lookup and the guard's floor, within its budget).
            For a provider's own :meth:`~spendguard.Provider.check` it is the balance.
        shortfall: ``max(required - available, 0)``.
        unit: The provider's unit (``"USD"``, ``"credits"``).
        source: ``"cache"``, ``"remote"`` or ``"fallback"`` (see :data:`Source`).
        age: Seconds since the balance behind the decision was looked up; ``None`` when
            no balance was known.
    """

    sufficient: bool
    required: Decimal
    available: Decimal
    shortfall: Decimal
    unit: str
    source: Source
    age: float | None = None

    @classmethod
    def of(
        cls,
        required: Decimal,
        available: Decimal,
        unit: str,
        source: Source,
        age: float | None = None,
    ) -> Check:
        """Build a check from what is required and what is available."""
        shortfall = CONTEXT.subtract(required, available)
        if shortfall > 0:
            return cls(False, required, available, shortfall, unit, source, age)
        return cls(True, required, available, Decimal(0), unit, source, age)

    def __str__(self) -> str:
        verdict = "sufficient" if self.sufficient else "insufficient"
        text = (
            f"{verdict}: need {format_amount(self.required, self.unit)}, "
            f"{format_amount(self.available, self.unit, bare=True)} available"
        )
        if not self.sufficient:
            text += f", short by {format_amount(self.shortfall, self.unit, bare=True)}"
        return f"{text} ({self.source})"
