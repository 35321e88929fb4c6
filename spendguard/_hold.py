"""Holds: credit set aside for work in flight, settled or released exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from ._account import ENDED, EXPIRED, HELD, PENDING, QUEUED, Ticket
from ._money import Amount, atoms_up, format_amount, from_atoms, to_amount

if TYPE_CHECKING:
    from ._engine import Engine

HoldState = Literal["pending", "held", "settled", "released", "expired"]
"""Where a hold stands: ``"pending"`` until its decision holds it; ``"held"`` while open;
``"settled"`` once something was charged; ``"released"`` when it ended with nothing
charged; ``"expired"`` when it outlived the guard's ``hold_ttl`` and stopped blocking others
(its owner may still end it)."""

_ZERO = Decimal(0)
_STATES: dict[int, HoldState] = {PENDING: "pending", HELD: "held", EXPIRED: "expired"}


def _paid(ticket: Ticket) -> int:
    """What ``ticket`` charged (a queued call's ticket: all it held, unless released)."""
    if ticket.phase == QUEUED:
        return ticket.reserved if ticket.charge else 0
    return ticket.paid


class Hold(Ticket):
    """Credit held for one guarded piece of work.

    Yielded by :meth:`SpendGuard.spend`, returned by :func:`spendguard.current_hold`
    inside a decorated function or a ``spend`` block, and owned by a :class:`Batch` for
    all its items. While held, ``amount`` counts against what other calls may spend. It
    ends one of three ways, and only the first counts (later calls change nothing):

    - :meth:`settle` records what was really charged (by default ``amount``);
    - :meth:`release` gives back what is still held, charging nothing more;
    - its block or call ends: an exception carrying an HTTP 402 response releases it (the
      provider charged nothing), anything else settles it in full.

    A hold left open longer than the guard's ``hold_ttl`` expires: it stops blocking
    others and a WARNING names it. Its owner can still settle it, and what it settles is
    counted as spent. A decorated call's hold never expires: the call always ends it.

    Attributes:
        amount: What was held when the hold began, in the provider's unit.
        label: What the hold is for, as listed by :meth:`SpendGuard.holds`; may be ``None``.
        created_at: When it began, on the guard's clock.
        expires_at: When it expires unless ended first (``inf`` without a ``hold_ttl``,
            and for a decorated call's); a batch pushes it back each time an item is done.
    """

    __slots__ = (
        "__weakref__",
        "_of",
        "amount",
        "created_at",
        "expires_at",
        "label",
    )

    listed = True

    def __init__(
        self, engine: Engine, amount: Decimal, atoms: int, label: str | None = None
    ) -> None:
        self.reserved = 0
        self.phase = PENDING
        self.engine = engine
        self.amount = amount
        self.cost = atoms
        self.label = label
        self.created_at = engine.clock()
        self.expires_at = self.created_at + engine.hold_ttl
        self._of: Ticket = self

    @property
    def state(self) -> HoldState:
        """``"pending"``, ``"held"``, ``"settled"``, ``"released"`` or ``"expired"``."""
        ticket = self._of
        phase = ticket.phase
        if phase in (ENDED, QUEUED):
            return "settled" if _paid(ticket) else "released"
        return _STATES[phase]

    @property
    def charged(self) -> Decimal:
        """What was recorded as spent so far: 0 until it is settled (a batch: its items
        done)."""
        ticket = self._of
        return _ZERO if ticket.phase == PENDING else from_atoms(_paid(ticket))

    @property
    def held(self) -> Decimal:
        """What it still holds, blocking others: 0 once ended or expired."""
        ticket = self._of
        return _ZERO if ticket.phase == QUEUED else from_atoms(ticket.reserved)

    def settle(self, actual: Amount | None = None) -> None:
        """Record the real cost (``amount`` by default); the hold ends.

        Raises:
            ValueError: ``actual`` is negative, NaN or infinite.
            TypeError: ``actual`` is not an amount.
        """
        charged = self.cost if actual is None else atoms_up(to_amount(actual, name="actual"))
        self.engine.end(self._of, charged)

    def release(self) -> None:
        """Give back what is still held, charging nothing more; the hold ends."""
        self.engine.end(self._of, None)

    def __repr__(self) -> str:
        unit = self.engine.unit
        label = "" if self.label is None else f"{self.label!r}: "
        state = self.state
        text = f"<Hold {label}{format_amount(self.amount, unit)} {state}"
        charged = self.charged
        if state == "settled" and charged != self.amount:
            text += f" at {format_amount(charged, unit)}"
        elif state in ("held", "expired") and charged:
            text += f", {format_amount(charged, unit)} spent"
        return text + ">"


class CallHold(Hold):
    """A decorated call's hold, over the call's own ticket: ending it ends the call's
    ticket, and the call then charges nothing more when it returns."""

    __slots__ = ()

    listed = False

    def __init__(self, engine: Engine, call: Ticket) -> None:
        atoms = call.reserved + call.paid
        super().__init__(engine, from_atoms(atoms), atoms)
        self.expires_at = float("inf")
        self._of = call
