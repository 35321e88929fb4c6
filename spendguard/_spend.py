"""``with guard.spend(amount)``: hold around a block of work; and the current hold.

The block's :class:`~spendguard.Hold` exists, owning nothing yet, before the decision
holds its amount; from then on every way out of ``__enter__`` or the block ends it.

An open block is found by the frame that entered it (see :data:`_BLOCKS`): the frame
running a ``with`` statement is the one running its body and calling ``__exit__``, in
every thread and task, so the block's exit and :func:`current_hold` find its hold with
one dictionary lookup. A context variable did the same at about 300 ns more per block
(``benchmarks/run.py``, Python 3.11), a fifth of the whole block.

CPython takes a pending signal (a Ctrl-C) at the start of any Python function and after
any call returns. Should one interrupt a block's exit, its ``except`` clause, written with
no call, takes the hold off the registry and leaves its settling to the account's next
decision or reading. A signal taken at the very first instruction of ``__exit__`` is beyond
the reach of any Python context manager: that block stays registered after its frame has
stopped running, and :func:`settle_abandoned` (run by every reading of the guard in the
thread that entered it: signals reach the main thread alone) ends it. Only blocks a
``with`` statement entered qualify (its instruction is kept in the entry): one entered by
hand may be left from elsewhere, later.

Nothing here reads another thread's stack: on CPython 3.11, following ``f_back`` from a
frame of another running thread can return a freed object and crash the interpreter (a
segfault in ``PyFrame_GetBack``, seen here under ``sys.setswitchinterval(1e-6)``). Each
entry records the thread that entered it instead.
"""

from __future__ import annotations

import contextlib
import dis
import inspect
import math
import sys
import threading
from _thread import get_ident
from collections.abc import Callable
from decimal import Decimal
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, TypeAlias

from ._account import PENDING, Account, Ticket
from ._hold import CallHold, Hold
from ._money import format_amount

if TYPE_CHECKING:
    from ._engine import Engine

_Entry: TypeAlias = "tuple[Hold, Spend, _Entry | None, int, int]"

_BLOCKS: dict[FrameType, _Entry] = {}
"""The open ``spend`` blocks, by the frame that entered them: the innermost block's hold,
its ``Spend``, the entry of the block it is nested in within that frame (or ``None``),
the offset of the frame's instruction that entered it (-1 through an exit stack), and
the identifier of the thread that entered it. A frame belongs to one thread or task,
which alone adds and removes its entries; dict operations are atomic, so the threads
sharing it never see one half done."""

_STRAYS = threading.Lock()
"""Serialises the searches of the registry: for a block left from another frame than it
was entered from, and for blocks whose frame stopped running."""

_getframe = sys._getframe

_DUE = -math.inf
"""An account's ``next_expiry`` that sends its next decision through its deferred endings."""

_RELAYS = frozenset(
    {
        contextlib.ExitStack.enter_context.__code__,
        contextlib.AsyncExitStack.enter_async_context.__code__,
    }
)
"""Code that enters a block on behalf of its caller: the block is its caller's."""

_SUSPENDABLE = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)
"""Code whose frame may wait outside every thread's stack, its blocks open."""

_WITHS = frozenset(dis.opmap[name] for name in ("BEFORE_WITH", "SETUP_WITH") if name in dis.opmap)
"""The opcodes of a ``with`` statement calling ``__enter__`` (3.11 and later; 3.10)."""

CALL_CODES: set[CodeType] = set()
"""The code objects of the decorator's closures: a frame running one is a guarded call,
and its ``ticket`` local is the call's hold."""


def settle_abandoned(account: Account) -> None:
    """Settle in full the holds on ``account`` of blocks this thread's ``with`` statements
    entered in a frame that stopped running without leaving them: a Ctrl-C taken as the
    block's ``__exit__`` started, before any of its code ran (a ``with`` statement leaves
    its blocks on every other way out of its frame).

    A frame that is not a generator's or a coroutine's runs in the thread that called it,
    exactly as long as it is on that thread's stack, which this thread reads safely as its
    own. Blocks of other threads are left to those threads' readings (or ``hold_ttl``).
    Generator and coroutine frames wait off every stack with their blocks open, so theirs
    are left to ``hold_ttl``; so is everything once ``greenlet`` is imported, since a
    waiting greenlet's frames leave the stack too.
    """
    if not _BLOCKS or "greenlet" in sys.modules:
        return
    entries = _BLOCKS.copy().items()  # a copy in one step: other threads change the registry
    me = get_ident()
    running: set[FrameType] = set()
    frame: FrameType | None = _getframe()
    while frame is not None:
        running.add(frame)
        frame = frame.f_back
    abandoned: list[Hold] = []
    for frame, entry in entries:
        if entry[4] != me or frame in running or frame.f_code.co_flags & _SUSPENDABLE:
            continue
        left = _unlink(entry, _entered_by_with(frame.f_code, account))
        if left is entry:
            continue
        taken = False
        with _STRAYS:  # no call and no loop inside: nothing can interrupt it
            if frame in _BLOCKS and _BLOCKS[frame] is entry:
                if left is None:
                    del _BLOCKS[frame]
                else:
                    _BLOCKS[frame] = left
                taken = True
        stranded = _entered_by_with(frame.f_code, account)
        link: _Entry | None = entry if taken else None
        while link is not None:
            if stranded(link):
                abandoned.append(link[0])
            link = link[2]
    for hold in abandoned:
        hold.settle()


def _entered_by_with(code: CodeType, account: Account) -> Callable[[_Entry], bool]:
    """Whether a link of an entry in a frame running ``code`` was entered by a ``with``
    and holds on ``account``."""

    def entered(link: _Entry) -> bool:
        return link[0].engine.account is account and _by_with(code, link[3])

    return entered


def _by_with(code: CodeType, offset: int) -> bool:
    """Whether the instruction at ``offset`` in ``code`` is a ``with`` statement's."""
    return offset >= 0 and code.co_code[offset] in _WITHS


def _unlink(entry: _Entry, gone: Callable[[_Entry], bool]) -> _Entry | None:
    """``entry``'s chain without the links ``gone`` picks (``entry`` itself if none)."""
    kept: list[_Entry] = []
    link: _Entry | None = entry
    while link is not None:
        if not gone(link):
            kept.append(link)
        link = link[2]
    if len(kept) == _length(entry):
        return entry
    rebuilt: _Entry | None = None
    for hold, spend, _, offset, thread in reversed(kept):
        rebuilt = (hold, spend, rebuilt, offset, thread)
    return rebuilt


def _length(entry: _Entry | None) -> int:
    count = 0
    while entry is not None:
        count += 1
        entry = entry[2]
    return count


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
        offset = frame.f_lasti
        if frame.f_code in _RELAYS:
            frame, offset = frame.f_back or frame, -1
        _BLOCKS[frame] = (hold, self, _BLOCKS.get(frame), offset, get_ident())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hold = None
        try:
            hold = self._close(_getframe(1))
            self._engine.end_block(hold, hold.cost, exc)
        except BaseException as interrupt:  # written out, here and in __aexit__: a call
            # could itself be interrupted before the hold is deferred
            trace = interrupt.__traceback__
            frame = None if hold is not None or trace is None else trace.tb_frame.f_back
            if frame is not None and frame in _BLOCKS and _BLOCKS[frame][1] is self:
                hold, _, outer, _, _ = _BLOCKS[frame]
                if outer is None:
                    del _BLOCKS[frame]
                else:
                    _BLOCKS[frame] = outer
            if hold is not None:
                account = self._engine.account
                account.deferred += (hold.settle,)
                account.next_expiry = _DUE
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: bookkeeping that cannot be interrupted by cancellation.
        hold = None
        try:
            hold = self._close(_getframe(1))
            self._engine.end_block(hold, hold.cost, exc)
        except BaseException as interrupt:  # no call (one could be interrupted): as in __exit__
            trace = interrupt.__traceback__
            frame = None if hold is not None or trace is None else trace.tb_frame.f_back
            if frame is not None and frame in _BLOCKS and _BLOCKS[frame][1] is self:
                hold, _, outer, _, _ = _BLOCKS[frame]
                if outer is None:
                    del _BLOCKS[frame]
                else:
                    _BLOCKS[frame] = outer
            if hold is not None:
                account = self._engine.account
                account.deferred += (hold.settle,)
                account.next_expiry = _DUE
            raise

    def _close(self, frame: FrameType) -> Hold:
        """Take this ``Spend``'s innermost block entered from ``frame`` off the registry;
        its hold. From the lookup on, nothing here is a call, so nothing can interrupt it."""
        entry = _BLOCKS.get(frame)
        if entry is not None and entry[1] is self:
            if entry[2] is None:
                del _BLOCKS[frame]
            else:
                _BLOCKS[frame] = entry[2]
            return entry[0]
        return self._stray()

    def _stray(self) -> Hold:
        """Take this ``Spend``'s newest block entered from another frame than the one
        leaving it (``contextlib.ExitStack`` leaves from a frame of its own).

        Raises:
            RuntimeError: No block of this ``Spend`` is open.
        """
        while True:
            found = self._newest(get_ident())
            if found is None:
                break
            found_in, entry, hold, rebuilt = found
            taken = False
            with _STRAYS:  # no call and no loop inside: nothing can interrupt it
                if found_in in _BLOCKS and _BLOCKS[found_in] is entry:
                    if rebuilt is None:
                        del _BLOCKS[found_in]
                    else:
                        _BLOCKS[found_in] = rebuilt
                    taken = True
            if taken:
                return hold
        raise RuntimeError(f"{self!r} was left more times than it was entered")

    def _newest(self, me: int) -> tuple[FrameType, _Entry, Hold, _Entry | None] | None:
        """Where this ``Spend``'s block to leave is registered; its entry there, its hold,
        and the entry without it. ``None``: nowhere.

        Blocks thread ``me`` entered go first, then those of other threads; in each, the
        newest block an exit stack entered, then the newest entered by hand. Another
        thread's block entered by hand is left only once that thread has ended; a block a
        ``with`` statement entered, never (its own frame leaves it).
        """
        best: tuple[int, FrameType, _Entry, _Entry] | None = None
        alive: set[int] | None = None
        for found_in in reversed(_BLOCKS.copy()):  # one step, as other threads change it
            entry = _BLOCKS.get(found_in)
            link: _Entry | None = entry
            while entry is not None and link is not None:
                if link[1] is self and (link[3] < 0 or not _by_with(found_in.f_code, link[3])):
                    rank = (0 if link[4] == me else 2) + (link[3] >= 0)
                    if rank == 3:
                        if alive is None:
                            alive = {thread.ident or 0 for thread in threading.enumerate()}
                        rank = 4 if link[4] in alive else 3
                    if rank < 4 and (best is None or rank < best[0]):
                        best = rank, found_in, entry, link
                link = link[2]
        if best is None:
            return None
        _, found_in, entry, mine = best
        return found_in, entry, mine[0], _unlink(entry, mine.__eq__)

    def __repr__(self) -> str:
        return f"<Spend {format_amount(self.amount, self._engine.unit)}>"
