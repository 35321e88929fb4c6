"""Holds: credit set aside for a call in flight, settled or released exactly once."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from ._money import Amount, format_amount, to_amount

if TYPE_CHECKING:
    from ._guard import SpendGuard

HoldState = Literal["held", "settled", "released", "expired"]
"""Where a hold stands: ``"held"`` while open; ``"settled"`` once something was charged;
``"released"`` when it ended with nothing charged; ``"expired"`` when it outlived the
guard's ``hold_ttl`` and stopped blocking others (its owner may still end it)."""

_ZERO = Decimal(0)


class Hold:
    """Credit held for one guarded block of work, yielded by :meth:`SpendGuard.spend`
    (a :class:`Batch` owns one for all its items).

    While held, ``amount`` counts against what other calls may spend. The block ends it
    one of three ways, and only the first counts (later calls change nothing):

    - :meth:`settle` records what was really charged (by default ``amount``);
    - :meth:`release` gives back what is still held;
    - leaving the ``with`` block settles whatever is still held, in full.

    A hold left open longer than the guard's ``hold_ttl`` expires: it stops blocking
    others and a WARNING names it. Its owner can still settle it, and what it settles is
    counted as spent.

    Attributes:
        amount: What was held when the hold began, in the provider's unit.
        label: What the hold is for, as listed by :meth:`SpendGuard.holds`; may be ``None``.
        created_at: When it began, on the guard's clock.
        expires_at: When it expires unless ended first (``inf`` without a ``hold_ttl``);
            a batch pushes it back each time an item is done.
    """

    __slots__ = (
        "_account",
        "_charged",
        "_guard",
        "_held",
        "_state",
        "_ttl",
        "amount",
        "created_at",
        "expires_at",
        "label",
    )

    def __init__(self, guard: SpendGuard, amount: Decimal, *, label: str | None = None) -> None:
        # The guard's decision has already counted ``amount`` as held; the hold owns it now.
        self._guard = guard
        self._account = guard._account
        self.amount = amount
        self.label = label
        self._held = amount
        self._state: HoldState = "held"
        self._charged = _ZERO
        self._ttl = math.inf if guard.hold_ttl is None else guard.hold_ttl
        self.created_at = guard._clock()
        self.expires_at = self.created_at + self._ttl
        self._account.add_hold(self)

    @property
    def state(self) -> HoldState:
        """``"held"``, ``"settled"``, ``"released"`` or ``"expired"`` (see :data:`HoldState`)."""
        return self._state

    @property
    def charged(self) -> Decimal:
        """What was recorded as spent so far: 0 for a plain hold until it is settled."""
        return self._charged

    @property
    def held(self) -> Decimal:
        """What it still holds, blocking others: 0 once ended or expired."""
        return self._held

    def settle(self, actual: Amount | None = None) -> None:
        """Record the real cost (``amount`` by default); the hold ends.

        Raises:
            ValueError: ``actual`` is negative, NaN or infinite.
        """
        charged = self.amount if actual is None else to_amount(actual, name="actual")
        self._guard._end_hold(self, charged)

    def release(self) -> None:
        """Give back what is still held, charging nothing more; the hold ends."""
        self._guard._end_hold(self, None)

    def __repr__(self) -> str:
        unit = self._guard.unit
        label = "" if self.label is None else f"{self.label!r}: "
        text = f"<Hold {label}{format_amount(self.amount, unit)} {self._state}"
        if self._state == "settled" and self._charged != self.amount:
            text += f" at {format_amount(self._charged, unit)}"
        elif self._state in ("held", "expired") and self._charged:
            text += f", {format_amount(self._charged, unit)} spent"
        return text + ">"

    # -- bookkeeping, always under the account's lock ---------------------------------

    def _end(self, charged: Decimal | None) -> None:
        """End the hold once: ``charged`` is its whole cost; ``None`` charges nothing more."""
        with self._account.lock:
            self._end_locked(charged)

    def _end_locked(self, charged: Decimal | None) -> None:
        state = self._state
        if state == "held":
            self._unblock_locked()
            del self._account.holds[self]
        elif state != "expired":
            return
        if charged is not None:
            self._charge_locked(charged - self._charged)
        self._state = "released" if charged is None and not self._charged else "settled"

    def _consume_locked(self, part: Decimal, now: float) -> None:
        """Move ``part`` from held to spent (a batch item is done); the owner is alive."""
        if self._state == "held":
            self._held -= part
            self._account.held -= part
            self._guard._held -= part
            self.expires_at = now + self._ttl
        elif self._state != "expired":
            return
        self._charge_locked(part)

    def _expire_locked(self) -> None:
        """Stop blocking others; the account drops the hold from its open list."""
        if self._state == "held":
            self._unblock_locked()
            self._state = "expired"

    def _unblock_locked(self) -> None:
        held, self._held = self._held, _ZERO
        self._account.held -= held
        self._guard._held -= held

    def _charge_locked(self, amount: Decimal) -> None:
        self._charged += amount
        account = self._account
        account.spent += amount
        if account.limit is not None:
            account.limit -= amount
        self._guard._spent += amount
