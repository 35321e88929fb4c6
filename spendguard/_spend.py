"""``with guard.spend(amount)``: hold around a block of work; and the current hold.

The block's :class:`~spendguard.Hold` exists, owning nothing yet, before the decision
holds its amount; from then on every way out of ``__enter__`` or the block ends it.
"""

from __future__ import annotations

import contextvars
import sys
from decimal import Decimal
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING

from ._account import PENDING, Ticket
from ._hold import CallHold, Hold
from ._money import format_amount

if TYPE_CHECKING:
    from ._engine import Engine

_CURRENT: contextvars.ContextVar[tuple[Hold, FrameType] | None] = contextvars.ContextVar(
    "spendguard_current_hold", default=None
)
"""The innermost ``spend`` block's hold in this context, with the frame that entered it."""

CALL_CODES: set[CodeType] = set()
"""The code objects of the decorator's closures: a frame running one is a guarded call,
and its ``ticket`` local is the call's hold."""


def current_hold() -> Hold | None:
    """The :class:`Hold` of the innermost guarded call or ``spend`` block running now.

    Inside a function decorated with ``@guard(cost=...)`` (sync or async, and whatever
    it calls) it is that call's hold; inside ``with guard.spend(...)`` / ``async with``
    it is the block's. ``None`` elsewhere, and in threads or tasks the call or block
    started: the hold belongs to the code that runs inside it. Settle it with the real
    price from the provider's answer, or release it when nothing was charged; the call's
    end then changes nothing more.
    """
    block, block_frame = _CURRENT.get() or (None, None)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame is block_frame:
            return block
        if frame.f_code in CALL_CODES:
            found = frame.f_locals
            ticket: Ticket = found["ticket"]
            if ticket.phase == PENDING:
                return None
            return CallHold(found["engine"], ticket)
        frame = frame.f_back
    return None


class Spend:
    """The context manager returned by :meth:`SpendGuard.spend` (``with`` and ``async with``).

    Each entry holds anew: one ``Spend`` may be entered again after its block ended, and
    by several threads or tasks at once, each getting a hold of its own (so a guard may
    hand out the same ``Spend`` for the same amount and label).
    """

    __slots__ = ("_atoms", "_engine", "_open", "amount", "label")

    def __init__(
        self, engine: Engine, amount: Decimal, atoms: int, label: str | None = None
    ) -> None:
        self._engine = engine
        self.amount = amount
        self._atoms = atoms
        self.label = label
        # The open entries: each hold with the token that restores current_hold(). Dict
        # operations are atomic, so threads sharing this Spend never see one half done.
        self._open: dict[Hold, contextvars.Token[tuple[Hold, FrameType] | None]] = {}

    def __enter__(self) -> Hold:
        engine = self._engine
        hold = Hold(engine, self.amount, self._atoms, self.label)
        try:
            if not self._take_cached(hold):
                engine.admit(hold, self._atoms)
            self._open[hold] = _CURRENT.set((hold, sys._getframe(1)))
        except BaseException:
            self._abandon(hold)
            raise
        return hold

    async def __aenter__(self) -> Hold:
        engine = self._engine
        hold = Hold(engine, self.amount, self._atoms, self.label)
        try:
            if not self._take_cached(hold):
                await engine.aadmit(hold, self._atoms)
            self._open[hold] = _CURRENT.set((hold, sys._getframe(1)))
        except BaseException:
            self._abandon(hold)
            raise
        return hold

    def _take_cached(self, hold: Hold) -> bool:
        """Hold from a fresh snapshot when nothing else must happen (no lookup, listener or
        shared ledger); ``False`` sends the caller to the full decision."""
        engine = self._engine
        account, now = engine.account, hold.created_at
        return (
            engine.plain
            and now < account.next_expiry
            and account.take_cached(hold, self._atoms, engine.floor, engine.ttl, now, engine.tally)
            is not None
        )

    def _abandon(self, hold: Hold) -> None:
        hold.release()
        self._open.pop(hold, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current = _CURRENT.get()
        if current is not None and current[0] in self._open:
            hold = current[0]
            token = self._open.pop(hold)
        else:  # left in another context than it was entered in: end the newest
            hold, token = self._open.popitem()
        try:  # noqa: SIM105 - contextlib.suppress costs a tenth of the whole block
            _CURRENT.reset(token)
        except ValueError:  # made in another context: nothing to restore here
            pass
        if exc is None:
            self._engine.end(hold, self._atoms)
        else:
            self._engine.end_block(hold, self._atoms, exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: bookkeeping that cannot be interrupted by cancellation.
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Spend {format_amount(self.amount, self._engine.unit)}>"
