"""Batches: price a whole job, hold it before item one, count each item as it is done."""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from ._account import ENDED
from ._engine import to_atoms
from ._hold import Hold
from ._money import Amount, format_amount, from_atoms, to_amount
from ._progress import ProgressBar, bar_factory

if TYPE_CHECKING:
    from ._engine import Engine
    from ._policy import Outcome

T = TypeVar("T")

ItemCost = Amount | Callable[[T], Amount]
"""A fixed amount per item, or a callable receiving one item and returning its amount."""

_ZERO = Decimal(0)
_BarFactory = Callable[[int, str, str], ProgressBar]


@attrs.frozen
class Forecast:
    """What a batch would cost and how much of it fits now: :meth:`SpendGuard.forecast`.

    Attributes:
        count: How many items the batch has.
        total: What all of them cost, in ``unit``.
        available: What the guard could spend when it looked.
        affordable: How many of the first items fit in ``available``.
        shortfall: What is missing for the whole batch: ``max(total - available, 0)``.
        unit: The provider's unit.
        reason: Why, when it is not plain arithmetic: the guard's budget limits, the
            provider's own check refused (then ``affordable`` is 0), or the balance was
            unavailable and the failure policy lets the batch through.
    """

    count: int
    total: Decimal
    available: Decimal
    affordable: int
    shortfall: Decimal
    unit: str
    reason: str | None = None

    @property
    def sufficient(self) -> bool:
        """Whether every item fits."""
        return self.affordable == self.count

    def __str__(self) -> str:
        unit = self.unit
        items = "1 item needs" if self.count == 1 else f"{self.count} items need"
        text = (
            f"{items} {format_amount(self.total, unit)}, "
            f"{format_amount(self.available, unit, bare=True)} available: "
        )
        if self.sufficient:
            text += "all fit"
        else:
            text += f"{self.affordable or 'none'} fit"
            if self.shortfall:
                text += f", short by {format_amount(self.shortfall, unit, bare=True)}"
        return f"{text} ({self.reason})" if self.reason else text


class Batch(Generic[T]):
    """A batch's items, handed out one at a time against credit held for all of them.

    Made by :meth:`SpendGuard.batch`, which has already held the cost of every item it
    will hand out. Iterate it once with ``for``. Each item counts as spent when the loop
    asks for the next one, or when the batch ends. Items never handed out are released
    as soon as the loop breaks, an exception leaves a ``with`` block, :meth:`close` is
    called, or the batch is garbage-collected: use ``with`` for a deterministic moment.
    Settling or releasing its :attr:`hold` ends it too: no further item is handed out,
    since nothing would pay for it.

    Attributes:
        count: How many items it hands out.
        total: What it held for them at the start.
        skipped: The items left out because they did not fit (``partial=True``), in order.
    """

    __slots__ = ("__weakref__", "_cursor", "_finalizer", "_items", "_unit", "count", "skipped")

    def __init__(
        self,
        items: list[T],
        skipped: list[T],
        cursor: _Cursor,
        unit: str,
    ) -> None:
        self._items = items
        self.skipped = skipped
        self.count = len(items)
        self._cursor = cursor
        self._unit = unit
        self._finalizer = weakref.finalize(self, cursor.abandon)

    @property
    def total(self) -> Decimal:
        """What was held for the items at the start."""
        return self._cursor.total

    @property
    def hold(self) -> Hold | None:
        """The batch's :class:`Hold` (``None`` when no item fitted)."""
        return self._cursor.hold

    @property
    def done(self) -> int:
        """How many items have been counted as spent."""
        return self._cursor.done

    @property
    def held(self) -> Decimal:
        """What the batch still holds for items not yet done."""
        hold = self._cursor.hold
        return _ZERO if hold is None else hold.held

    @property
    def spent(self) -> Decimal:
        """What the items done so far cost."""
        hold = self._cursor.hold
        return _ZERO if hold is None else hold.charged

    def close(self) -> None:
        """Count the item in hand as spent and release the rest; later calls do nothing."""
        self._cursor.end()
        self._finalizer.detach()  # only now: should a signal stop the ending, it runs again

    def __iter__(self) -> Batch[T]:
        return self

    def __next__(self) -> T:
        index = self._cursor.take()
        if index is None:
            self._finalizer.detach()
            raise StopIteration
        return self._items[index]

    def __enter__(self) -> Batch[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        unit = self._unit
        text = (
            f"<Batch {self.done}/{self.count} items done, "
            f"{format_amount(self.spent, unit)} spent, "
            f"{format_amount(self.held, unit, bare=True)} held"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text + ">"


class AsyncBatch(Generic[T]):
    """:class:`Batch` for coroutines, made by :meth:`SpendGuard.abatch`.

    Nothing is read, priced or held until the batch starts: on ``async with`` or on the
    first step of ``async for``, which raises :class:`InsufficientCredits` when the batch
    does not fit. A balance lookup runs in a worker thread; ending the batch never awaits,
    so a cancelled task leaves nothing held.
    """

    __slots__ = ("_batch", "_begin")

    def __init__(self, begin: Callable[[], Awaitable[Batch[T]]]) -> None:
        self._begin: Callable[[], Awaitable[Batch[T]]] | None = begin
        self._batch: Batch[T] | None = None

    @property
    def started(self) -> bool:
        """Whether the batch has been priced and held."""
        return self._batch is not None

    @property
    def count(self) -> int:
        """How many items it hands out (0 until started)."""
        return 0 if self._batch is None else self._batch.count

    @property
    def total(self) -> Decimal:
        """What was held for the items at the start (0 until started)."""
        return _ZERO if self._batch is None else self._batch.total

    @property
    def skipped(self) -> list[T]:
        """The items left out because they did not fit (empty until started)."""
        return [] if self._batch is None else self._batch.skipped

    @property
    def hold(self) -> Hold | None:
        """The batch's :class:`Hold`, once started (``None`` when no item fitted)."""
        return None if self._batch is None else self._batch.hold

    @property
    def done(self) -> int:
        """How many items have been counted as spent."""
        return 0 if self._batch is None else self._batch.done

    @property
    def held(self) -> Decimal:
        """What the batch still holds for items not yet done."""
        return _ZERO if self._batch is None else self._batch.held

    @property
    def spent(self) -> Decimal:
        """What the items done so far cost."""
        return _ZERO if self._batch is None else self._batch.spent

    async def start(self) -> AsyncBatch[T]:
        """Read, price and hold the batch now, if not done yet.

        Raises:
            InsufficientCredits: The batch does not fit (``partial=False``).
        """
        begin, self._begin = self._begin, None
        if begin is not None:
            self._batch = await begin()
        return self

    def close(self) -> None:
        """Count the item in hand as spent and release the rest; later calls do nothing."""
        self._begin = None
        if self._batch is not None:
            self._batch.close()

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and symmetry with async generators."""
        self.close()

    def __aiter__(self) -> AsyncBatch[T]:
        return self

    async def __anext__(self) -> T:
        if self._batch is None:
            await self.start()
            if self._batch is None:
                raise StopAsyncIteration
        try:
            return next(self._batch)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AsyncBatch[T]:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: bookkeeping that cannot be interrupted by cancellation.
        self.close()

    def __repr__(self) -> str:
        if self._batch is None:
            return "<AsyncBatch not started>"
        return "<Async" + repr(self._batch)[1:]


class _Cursor:
    """Which of a batch's items were handed out and done, and the hold that pays for them.

    Kept apart from the :class:`Batch` so that a finalizer can end it once the batch is
    garbage-collected. Its own lock orders its counters; the engine keeps the money.
    """

    __slots__ = ("_bar", "_costs", "_engine", "_lock", "done", "ended", "handed", "hold", "total")

    def __init__(
        self,
        engine: Engine,
        hold: Hold | None,
        costs: list[int],
        total: Decimal,
        bar: ProgressBar | None,
    ) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.hold = hold
        self._costs = costs
        self.total = total
        self._bar = bar
        self.handed = 0
        self.done = 0
        self.ended = hold is None

    def take(self) -> int | None:
        """Count the item handed out last as done; the index of the next one, or ``None``."""
        hold = self.hold
        if hold is None:
            return None
        with self._lock:
            if self.ended:
                return None
            counted = self._count_locked(hold)
            index: int | None = self.handed
            if index == len(self._costs) or hold.phase == ENDED:  # ENDED: by its owner
                self.ended = True
                index = None
            else:
                self.handed += 1
        if counted:
            self._show(hold)
        if index is None:
            self._finish(hold)
        return index

    def end(self) -> None:
        """Count the item in hand as done (the first call only) and release the rest: again
        on every call, in case a signal stopped an earlier one between the two."""
        hold = self.hold
        if hold is None:
            return
        counted = False
        with self._lock:
            if not self.ended:
                counted = self._count_locked(hold)
                self.ended = True
        try:
            self._finish(hold)
        finally:
            if counted:
                self._show(hold)

    def abandon(self) -> None:
        """:meth:`end`, called by the batch's finalizer.

        The garbage collector may run it in a thread that holds the account's lock or this
        cursor's; then it must not wait for either, so the ending is left to the next
        decision on the account.
        """
        hold = self.hold
        if hold is None:
            return
        account = self._engine.account
        if self._engine.fleet is None and account.lock.acquire(blocking=False):
            account.lock.release()
            if self._lock.acquire(blocking=False):
                self._lock.release()
                self.end()
                return
        account.defer(self.end)

    def _count_locked(self, hold: Hold) -> bool:
        """Charge the item handed out last (conservatively before counting it done)."""
        if self.done == self.handed:
            return False
        engine = self._engine
        ticket = hold
        engine.consume(ticket, self._costs[self.done])
        self.done += 1
        engine.account.renew(ticket, engine.clock() + engine.hold_ttl)
        return True

    def _finish(self, hold: Hold) -> None:
        """Release what the items not done still hold (the hold ends), then close the bar."""
        try:
            self._engine.end(hold, None)
        finally:
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.close()

    def _show(self, hold: Hold) -> None:
        bar = self._bar
        if bar is not None:
            bar.advance(hold.charged, hold.held, from_atoms(self._engine.available_now()))


# -- pricing and holding -----------------------------------------------------------------


def pricer(cost: ItemCost[T]) -> Callable[[T], int]:
    """A function pricing one item, in atoms.

    Raises:
        TypeError, ValueError: A fixed ``cost`` is not a valid amount.
    """
    if callable(cost):
        price = cost
        return lambda item: to_atoms(to_amount(price(item), name="cost"))
    fixed = to_atoms(to_amount(cost, name="cost"))
    return lambda item: fixed


def price_all(items: Iterable[T], cost: ItemCost[T]) -> tuple[list[T], list[int]]:
    """Read ``items`` into a list and price each one, in order."""
    if isinstance(items, AsyncIterable) and not isinstance(items, Iterable):
        raise TypeError("items is an async iterable: use guard.abatch() or guard.aforecast()")
    listed = list(items)
    price = pricer(cost)
    return listed, [price(item) for item in listed]


def fitting(costs: list[int], available: int | None) -> tuple[int, int]:
    """How many of the first items fit in ``available``, and what they cost together."""
    total = 0
    if available is None:
        return len(costs), sum(costs)
    for count, cost in enumerate(costs):
        if total + cost > available:
            return count, total
        total += cost
    return len(costs), total


def forecast(engine: Engine, costs: list[int], outcome: Outcome) -> Forecast:
    """Turn a decision about a batch's total into a :class:`Forecast`."""
    total = sum(costs)
    available = 0 if outcome.available is None else outcome.available
    reason = None
    if outcome.admitted:
        affordable = len(costs)
        if outcome.source == "fallback":
            reason = "the balance is unavailable; the failure policy lets the batch through"
    else:
        affordable = fitting(costs, available)[0]
        reason = engine.refusal(total, outcome).reason
        if affordable == len(costs):
            affordable = 0
    shortfall = max(total - available, 0) if affordable < len(costs) else 0
    return Forecast(
        len(costs),
        from_atoms(total),
        from_atoms(available),
        affordable,
        from_atoms(shortfall),
        engine.unit,
        reason,
    )


def _shrink(
    engine: Engine, costs: list[int], asked: int, outcome: Outcome, partial: bool
) -> tuple[int, int]:
    """After a refusal of ``asked``: how many items to ask for next, and their cost.

    Raises:
        InsufficientCredits: The whole batch was asked for and ``partial`` is false, or
            the refusal was not about the balance (the provider's own check said no),
            so no shorter batch can be known to fit.
    """
    count, amount = fitting(costs, outcome.available)
    if not partial:
        raise engine.refusal(asked, outcome, affordable=count if amount < asked else 0)
    if amount >= asked:
        raise engine.refusal(asked, outcome)
    return count, amount


def _new_hold(engine: Engine, amount: int, count: int, label: str | None) -> Hold:
    return Hold(engine, from_atoms(amount), amount, label or f"batch of {count} items")


def hold_batch(
    engine: Engine, costs: list[int], partial: bool, label: str | None
) -> tuple[Hold | None, int]:
    """Hold the cost of all items, or of the longest prefix that fits: the hold (``None``
    when none fits) and how many items it pays for."""
    count, amount = len(costs), sum(costs)
    while count:
        hold = _new_hold(engine, amount, count, label)
        try:
            outcome = engine.decide(amount, hold)
        except BaseException:
            hold.release()  # a signal may land once it holds
            raise
        if outcome.admitted:
            return hold, count
        count, amount = _shrink(engine, costs, amount, outcome, partial)
    return None, 0


async def ahold_batch(
    engine: Engine, costs: list[int], partial: bool, label: str | None
) -> tuple[Hold | None, int]:
    """:func:`hold_batch` for coroutines."""
    count, amount = len(costs), sum(costs)
    while count:
        hold = _new_hold(engine, amount, count, label)
        try:
            outcome = await engine.adecide(amount, hold)
        except BaseException:
            hold.release()  # a signal may land once it holds
            raise
        if outcome.admitted:
            return hold, count
        count, amount = _shrink(engine, costs, amount, outcome, partial)
    return None, 0


def open_batch(
    engine: Engine,
    items: list[T],
    costs: list[int],
    held: tuple[Hold | None, int],
    *,
    bars: _BarFactory | None,
    label: str | None,
) -> Batch[T]:
    """Wrap what :func:`hold_batch` held in a :class:`Batch` that owns it. Until it
    returns, its caller owns the hold (a signal may land as this function starts)."""
    hold, count = held
    bar = None
    if hold is not None and bars is not None:
        bar = bars(count, engine.unit, label or engine.name)
    cursor = _Cursor(engine, hold, costs[:count], _ZERO if hold is None else hold.amount, bar)
    return Batch(items[:count], items[count:], cursor, engine.unit)


def start_batch(
    engine: Engine,
    items: Iterable[T],
    cost: ItemCost[T],
    *,
    partial: bool,
    progress: bool,
    label: str | None,
) -> Batch[T]:
    """Everything :meth:`SpendGuard.batch` does."""
    bars = bar_factory() if progress else None
    listed, costs = price_all(items, cost)
    held = hold_batch(engine, costs, partial, label)
    try:
        return open_batch(engine, listed, costs, held, bars=bars, label=label)
    except BaseException:
        if held[0] is not None:
            held[0].release()
        raise


def start_abatch(
    engine: Engine,
    items: Iterable[T] | AsyncIterable[T],
    cost: ItemCost[T],
    *,
    partial: bool,
    progress: bool,
    label: str | None,
) -> AsyncBatch[T]:
    """Everything :meth:`SpendGuard.abatch` does."""
    bars = bar_factory() if progress else None
    price = pricer(cost)

    async def begin() -> Batch[T]:
        listed = await read_items(items)
        costs = [price(item) for item in listed]
        held = await ahold_batch(engine, costs, partial, label)
        try:
            return open_batch(engine, listed, costs, held, bars=bars, label=label)
        except BaseException:
            if held[0] is not None:
                held[0].release()
            raise

    return AsyncBatch(begin)


async def read_items(items: Iterable[T] | AsyncIterable[T]) -> list[T]:
    """Read an iterable or an async iterable into a list."""
    if isinstance(items, AsyncIterable):
        return [item async for item in items]
    return list(items)
