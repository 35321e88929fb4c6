"""Holds: credit set aside for a call in flight, settled or released exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from ._money import Amount, format_amount, to_amount

if TYPE_CHECKING:
    from ._guard import SpendGuard

HoldState = Literal["held", "settled", "released"]


class Hold:
    """Credit held for one guarded block of work, yielded by :meth:`SpendGuard.spend`.

    While held, ``amount`` counts against what other calls may spend. The block ends it
    one of three ways, and only the first counts (later calls change nothing):

    - :meth:`settle` records what was really charged (by default ``amount``);
    - :meth:`release` gives it all back, when nothing was charged;
    - leaving the ``with`` block settles whatever is still held, in full.

    Attributes:
        amount: What is held, in the provider's unit.
    """

    __slots__ = ("_charged", "_guard", "_state", "amount")

    def __init__(self, guard: SpendGuard, amount: Decimal) -> None:
        self._guard = guard
        self.amount = amount
        self._state: HoldState = "held"
        self._charged = Decimal(0)

    @property
    def state(self) -> HoldState:
        """``"held"``, ``"settled"`` or ``"released"``."""
        return self._state

    @property
    def charged(self) -> Decimal:
        """What was recorded as spent: 0 while held or once released."""
        return self._charged

    def settle(self, actual: Amount | None = None) -> None:
        """Record the real cost (``amount`` by default); the hold ends.

        Raises:
            ValueError: ``actual`` is negative, NaN or infinite.
        """
        charged = self.amount if actual is None else to_amount(actual, name="actual")
        self._guard._end_hold(self, charged)

    def release(self) -> None:
        """Give the held amount back: nothing was charged; the hold ends."""
        self._guard._end_hold(self, None)

    def __repr__(self) -> str:
        unit = self._guard.unit
        text = f"<Hold {format_amount(self.amount, unit)} {self._state}"
        if self._state == "settled" and self._charged != self.amount:
            text += f" at {format_amount(self._charged, unit)}"
        return text + ">"
