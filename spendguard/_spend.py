"""``with guard.spend(amount)``: hold around a block of work; and the current hold.

The block's :class:`~spendguard.Hold` exists, owning nothing yet, before the decision
holds its amount; from then on every way out of ``__enter__`` or the block ends it.

An open block is found by the frame that entered it (see :data:`_BLOCKS`): the frame
running a ``with`` statement is the one running its body and calling ``__exit__``, in
every thread and task, so the block's exit and :func:`current_hold` find its hold with
one dictionary lookup. A context variable did the same at about 300 ns more per block
(``benchmarks/run.py``, Python 3.11), a fifth of the whole block.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from decimal import Decimal
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, TypeAlias

from ._account import PENDING, Ticket
from ._hold import CallHold, Hold
from ._money import format_amount

if TYPE_CHECKING:
    from ._engine import Engine

_Entry: TypeAlias = "tuple[Hold, Spend, _Entry | None]"

_BLOCKS: dict[FrameType, _Entry] = {}
"""The open ``spend`` blocks, by the frame that entered them: the innermost block's hold,
its ``Spend``, and the entry of the block it is nested in within that frame (or ``None``).
A frame belongs to one thread or task, which alone adds and removes its entries; dict
operations are atomic, so the threads sharing it never see one half done."""

_STRAYS = threading.Lock()
"""Serialises the search for a block left from another frame than it was entered from."""

_getframe = sys._getframe

_RELAYS = frozenset(
    {
        contextlib.ExitStack.enter_context.__code__,
        contextlib.AsyncExitStack.enter_async_context.__code__,
    }
)
"""Code that enters a block on behalf of its caller: the block is its caller's."""

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
    frame: FrameType | None = _getframe(1)
    while frame is not None:
        entry = _BLOCKS.get(frame)
        if entry is not None:
            return entry[0]
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

    __slots__ = ("_cost", "_engine", "amount", "label")

    def __init__(
        self, engine: Engine, amount: Decimal, atoms: int, label: str | None = None
    ) -> None:
        self._engine = engine
        self.amount = amount
        self._cost = atoms
        self.label = label

    def __enter__(self) -> Hold:
        engine = self._engine
        hold = Hold(engine, self.amount, self._cost, self.label)
        try:
            if not self._take_cached(hold):
                engine.admit(hold, hold.cost)
            self._open(hold, _getframe(1))
        except BaseException:
            hold.release()
            raise
        return hold

    async def __aenter__(self) -> Hold:
        engine = self._engine
        hold = Hold(engine, self.amount, self._cost, self.label)
        try:
            if not self._take_cached(hold):
                await engine.aadmit(hold, hold.cost)
            self._open(hold, _getframe(1))
        except BaseException:
            hold.release()
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
            and account.take_cached(hold, hold.cost, engine.floor, engine.ttl, now, engine.tally)
            is not None
        )

    def _open(self, hold: Hold, frame: FrameType) -> None:
        """Register ``hold`` as the innermost block of ``frame`` (or of the frame that
        asked ``frame`` to enter it, for an exit stack)."""
        if frame.f_code in _RELAYS:
            frame = frame.f_back or frame
        _BLOCKS[frame] = (hold, self, _BLOCKS.get(frame))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave(_getframe(1), exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: bookkeeping that cannot be interrupted by cancellation.
        self._leave(_getframe(1), exc)

    def _leave(self, frame: FrameType, exc: BaseException | None) -> None:
        """End the hold of this ``Spend``'s innermost block entered from ``frame``: settled
        in full, or released when ``exc`` carries a 402."""
        entry = _BLOCKS.get(frame)
        if entry is not None and entry[1] is self:
            hold, _, outer = entry
            if outer is None:
                del _BLOCKS[frame]
            else:
                _BLOCKS[frame] = outer
        else:
            hold = self._stray()
        self._engine.end_block(hold, hold.cost, exc)

    def _stray(self) -> Hold:
        """Take this ``Spend``'s newest block entered from another frame than the one
        leaving it (``contextlib.ExitStack`` leaves from a frame of its own).

        Raises:
            RuntimeError: No block of this ``Spend`` is open.
        """
        with _STRAYS:
            for frame, entry in reversed(list(_BLOCKS.items())):
                chain: list[tuple[Hold, Spend]] = []
                found: _Entry | None = entry
                while found is not None:
                    chain.append((found[0], found[1]))
                    found = found[2]
                mine = next((i for i, (_, spend) in enumerate(chain) if spend is self), None)
                if mine is None:
                    continue
                hold = chain.pop(mine)[0]
                rebuilt: _Entry | None = None
                for block, spend in reversed(chain):
                    rebuilt = (block, spend, rebuilt)
                if rebuilt is None:
                    del _BLOCKS[frame]
                else:
                    _BLOCKS[frame] = rebuilt
                return hold
        raise RuntimeError(f"{self!r} was left more times than it was entered")

    def __repr__(self) -> str:
        return f"<Spend {format_amount(self.amount, self._engine.unit)}>"
