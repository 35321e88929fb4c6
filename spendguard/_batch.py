"""Batches: price a whole job, hold it before item one, count each item as it is done.

Also the budget-aware ``map``: run a function over items, admitting only what the
balance covers, and report what was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from ._errors import ConfigurationError, InsufficientCredits
from ._hold import Hold
from ._money import Amount, format_amount, to_amount
from ._progress import ProgressBar, bar_factory

if TYPE_CHECKING:
    from ._guard import Spend, SpendGuard, _Outcome

T = TypeVar("T")
R = TypeVar("R")

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


@attrs.frozen
class Refusal(Generic[T]):
    """An item :meth:`SpendGuard.map` did not run because the account could not pay for it.

    Attributes:
        index: Its position among the items.
        item: The item itself.
        error: The refusal, with what was required and available.
    """

    index: int
    item: T
    error: InsufficientCredits


@attrs.frozen(repr=False)
class MapResult(Generic[T, R]):
    """What :meth:`SpendGuard.map` did. Every item is either in ``results`` or in ``refused``.

    Attributes:
        results: What the function returned for each item that ran, in the items' order.
        refused: The items that did not run for lack of credit, in order, with their errors.
    """

    results: tuple[R, ...]
    refused: tuple[Refusal[T], ...]

    @property
    def ok(self) -> bool:
        """Whether every item ran."""
        return not self.refused

    def __repr__(self) -> str:
        return f"<MapResult {len(self.results)} ran, {len(self.refused)} refused>"


class Batch(Generic[T]):
    """A batch's items, handed out one at a time against credit held for all of them.

    Made by :meth:`SpendGuard.batch`, which has already held the cost of every item it
    will hand out. Iterate it once with ``for``. Each item counts as spent when the loop
    asks for the next one, or when the batch ends. Items never handed out are released
    as soon as the loop breaks, an exception leaves a ``with`` block, :meth:`close` is
    called, or the batch is garbage-collected: use ``with`` for a deterministic moment.

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
        self._finalizer.detach()
        self._cursor.end()

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
    """Which of a batch's items were handed out and done.

    Kept apart from the :class:`Batch` so that a finalizer can end it once the batch is
    garbage-collected. Items are counted under the account's lock.
    """

    __slots__ = ("_bar", "_costs", "done", "ended", "handed", "hold", "renewed_at", "total")

    def __init__(
        self, hold: Hold | None, costs: list[Decimal], total: Decimal, bar: ProgressBar | None
    ) -> None:
        self.hold = hold
        self._costs = costs
        self.total = total
        self._bar = bar
        self.handed = 0
        self.done = 0
        self.ended = hold is None
        self.renewed_at = -math.inf if hold is None else hold.created_at

    def take(self) -> int | None:
        """Count the item handed out last as done; the index of the next one, or ``None``."""
        hold = self.hold
        if hold is None:
            return None
        with hold._account.lock:
            if self.ended:
                return None
            counted = self._count_locked()
            index: int | None = self.handed
            if index == len(self._costs):
                self.ended = True
                index = None
            else:
                self.handed += 1
            shown = self._amounts_locked() if counted else None
            renew = counted and index is not None and self._renew_due_locked(hold)
        self._show(shown)
        if renew:
            shared = hold._guard._shared
            assert shared is not None
            shared.renew_hold(hold)  # outside the lock: a round trip to the shared ledger
        if index is None:
            self._finish(hold)
        return index

    def end(self) -> None:
        """Count the item in hand as done and release the rest; only the first call counts."""
        hold = self.hold
        if hold is None:
            return
        with hold._account.lock:
            if self.ended:
                return
            counted = self._count_locked()
            self.ended = True
            shown = self._amounts_locked() if counted else None
        self._show(shown)
        self._finish(hold)

    def abandon(self) -> None:
        """:meth:`end`, called by the batch's finalizer.

        The garbage collector may run it in a thread that holds the account's lock, or
        inside a shared ledger's client; then it must not wait for either, so the ending
        is left to the next decision on the account.
        """
        hold = self.hold
        if hold is None:
            return
        account = hold._account
        if hold._guard._shared is None and account.lock.acquire(blocking=False):
            account.lock.release()
            self.end()
        else:
            account.defer(self.end)

    def _count_locked(self) -> bool:
        if self.done == self.handed:
            return False
        assert self.hold is not None
        self.hold._consume_locked(self._costs[self.done], self.hold._guard._clock())
        self.done += 1
        return True

    def _renew_due_locked(self, hold: Hold) -> bool:
        """Whether to renew the hold in the shared ledger now: the local hold is renewed
        with every item, the ledger's (a round trip) at most once per quarter of the
        ledger's own expiry, which may be shorter than ``hold_ttl``."""
        shared = hold._guard._shared
        if shared is None or hold._state != "held":
            return False
        expiry = min(hold._ttl, getattr(shared.ledger, "max_hold_ttl", math.inf))
        now = hold._guard._clock()
        if now - self.renewed_at < expiry / 4:
            return False
        self.renewed_at = now
        return True

    def _finish(self, hold: Hold) -> None:
        """End the hold at what the items done cost, through the guard (outside the lock:
        a shared ledger ends its own hold over the network)."""
        self._close_bar()
        charged = hold.charged or None
        try:
            hold._guard._end_hold(hold, charged)
        finally:
            hold._end(charged)  # idempotent: ends the local hold even if the ledger failed

    def _amounts_locked(self) -> tuple[Decimal, Decimal, Decimal] | None:
        """Spent, held and available for the progress bar, if there is one."""
        hold = self.hold
        if self._bar is None or hold is None:
            return None
        return hold._charged, hold._held, hold._guard._available_locked()

    def _show(self, amounts: tuple[Decimal, Decimal, Decimal] | None) -> None:
        if amounts is not None and self._bar is not None:
            self._bar.advance(*amounts)

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


# -- pricing and holding -----------------------------------------------------------------


def pricer(cost: ItemCost[T]) -> Callable[[T], Decimal]:
    """A function pricing one item.

    Raises:
        TypeError, ValueError: A fixed ``cost`` is not a valid amount.
    """
    if callable(cost):
        price = cost
        return lambda item: to_amount(price(item), name="cost")
    fixed = to_amount(cost, name="cost")
    return lambda item: fixed


def price_all(items: Iterable[T], cost: ItemCost[T]) -> tuple[list[T], list[Decimal]]:
    """Read ``items`` into a list and price each one, in order."""
    if isinstance(items, AsyncIterable) and not isinstance(items, Iterable):
        raise TypeError("items is an async iterable: use guard.abatch() or guard.aforecast()")
    listed = list(items)
    price = pricer(cost)
    return listed, [price(item) for item in listed]


def fitting(costs: list[Decimal], available: Decimal) -> tuple[int, Decimal]:
    """How many of the first items fit in ``available``, and what they cost together."""
    total = _ZERO
    for count, cost in enumerate(costs):
        if total + cost > available:
            return count, total
        total += cost
    return len(costs), total


def forecast(guard: SpendGuard, costs: list[Decimal], outcome: _Outcome) -> Forecast:
    """Turn a decision about a batch's total into a :class:`Forecast`."""
    total = sum(costs, _ZERO)
    admitted, available, source = outcome[:3]
    reason = None
    if admitted:
        affordable = len(costs)
        if source == "fallback":
            reason = "the balance is unavailable; the failure policy lets the batch through"
    else:
        affordable = fitting(costs, available)[0]
        reason = guard._refusal(total, outcome).reason
        if affordable == len(costs):
            affordable = 0
    shortfall = max(total - available, _ZERO) if affordable < len(costs) else _ZERO
    return Forecast(len(costs), total, available, affordable, shortfall, guard.unit, reason)


def _shrink(
    guard: SpendGuard,
    costs: list[Decimal],
    asked: Decimal,
    outcome: _Outcome,
    partial: bool,
) -> tuple[int, Decimal]:
    """After a refusal of ``asked``: how many items to ask for next, and their cost.

    Raises:
        InsufficientCredits: The whole batch was asked for and ``partial`` is false, or
            the refusal was not about the balance (the provider's own check said no),
            so no shorter batch can be known to fit.
    """
    count, amount = fitting(costs, outcome[1])
    if not partial:
        error = guard._refusal(asked, outcome)
        raise InsufficientCredits(
            required=asked,
            available=error.available,
            unit=error.unit,
            provider=error.provider,
            reason=error.reason,
            affordable=count if amount < asked else 0,
        )
    if amount >= asked:
        raise guard._refusal(asked, outcome)
    return count, amount


def hold_batch(guard: SpendGuard, costs: list[Decimal], partial: bool) -> tuple[int, Decimal]:
    """Hold the cost of all items, or of the longest prefix that fits; how many, and what."""
    count, amount = len(costs), sum(costs, _ZERO)
    while count:
        outcome = guard._decide(amount, hold=True)
        if outcome[0]:
            break
        count, amount = _shrink(guard, costs, amount, outcome, partial)
    return count, amount


async def ahold_batch(
    guard: SpendGuard, costs: list[Decimal], partial: bool
) -> tuple[int, Decimal]:
    """:func:`hold_batch` for coroutines."""
    count, amount = len(costs), sum(costs, _ZERO)
    while count:
        outcome = await guard._adecide(amount, hold=True)
        if outcome[0]:
            break
        count, amount = _shrink(guard, costs, amount, outcome, partial)
    return count, amount


def open_batch(
    guard: SpendGuard,
    items: list[T],
    costs: list[Decimal],
    held: tuple[int, Decimal],
    *,
    bars: _BarFactory | None,
    label: str | None,
) -> Batch[T]:
    """Wrap what :func:`hold_batch` held in a :class:`Batch` that owns it."""
    count, amount = held
    hold = None
    bar = None
    if count:
        hold = Hold(guard, amount, label=label or f"batch of {count} items")
        try:
            bar = None if bars is None else bars(count, guard.unit, label or guard.name)
        except BaseException:
            hold.release()
            raise
    cursor = _Cursor(hold, costs[:count], amount, bar)
    return Batch(items[:count], items[count:], cursor, guard.unit)


def start_batch(
    guard: SpendGuard,
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
    held = hold_batch(guard, costs, partial)
    return open_batch(guard, listed, costs, held, bars=bars, label=label)


def start_abatch(
    guard: SpendGuard,
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
        held = await ahold_batch(guard, costs, partial)
        return open_batch(guard, listed, costs, held, bars=bars, label=label)

    return AsyncBatch(begin)


async def read_items(items: Iterable[T] | AsyncIterable[T]) -> list[T]:
    """Read an iterable or an async iterable into a list."""
    if isinstance(items, AsyncIterable):
        return [item async for item in items]
    return list(items)


# -- map -------------------------------------------------------------------------------


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive integer, got {workers!r}")


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def map_items(
    guard: SpendGuard,
    fn: Callable[[T], R],
    items: Iterable[T],
    cost: ItemCost[T],
    workers: int,
) -> MapResult[T, R]:
    """Everything :meth:`SpendGuard.map` does."""
    _check_workers(workers)
    price = pricer(cost)
    name = _name(fn)
    slots = threading.BoundedSemaphore(workers)
    failed = threading.Event()
    running: list[Future[R]] = []
    refused: list[Refusal[T]] = []

    def run(block: Spend, item: T) -> R:
        try:
            try:
                result = fn(item)
            except BaseException as exc:
                failed.set()
                block.__exit__(type(exc), exc, exc.__traceback__)
                raise
            block.__exit__(None, None, None)
            return result
        finally:
            slots.release()

    with ThreadPoolExecutor(workers, thread_name_prefix="spendguard-map") as pool:
        for index, item in enumerate(items):
            block = guard.spend(price(item), label=f"{name}[{index}]")
            slots.acquire()
            if failed.is_set():
                slots.release()
                break
            try:
                block.__enter__()
            except InsufficientCredits as error:
                slots.release()
                refused.append(Refusal(index, item, error))
                continue
            except BaseException:
                slots.release()
                raise
            try:
                running.append(pool.submit(run, block, item))
            except BaseException:
                slots.release()
                _release(block)
                raise
    return MapResult(_results(running), tuple(refused))


async def amap_items(
    guard: SpendGuard,
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    cost: ItemCost[T],
    workers: int,
) -> MapResult[T, R]:
    """Everything :meth:`SpendGuard.amap` does."""
    _check_workers(workers)
    price = pricer(cost)
    name = _name(fn)
    slots = asyncio.Semaphore(workers)
    failed = asyncio.Event()
    running: list[asyncio.Task[R]] = []
    refused: list[Refusal[T]] = []

    async def run(block: Spend, item: T) -> R:
        try:
            try:
                result = await fn(item)
            except BaseException as exc:
                failed.set()
                block.__exit__(type(exc), exc, exc.__traceback__)
                raise
            block.__exit__(None, None, None)
            return result
        finally:
            slots.release()

    try:
        async with contextlib.aclosing(_aenumerate(items)) as numbered:
            async for index, item in numbered:
                block = guard.spend(price(item), label=f"{name}[{index}]")
                await slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                try:
                    await block.__aenter__()
                except InsufficientCredits as error:
                    slots.release()
                    refused.append(Refusal(index, item, error))
                    continue
                except BaseException:
                    slots.release()
                    raise
                running.append(asyncio.create_task(run(block, item)))
    except BaseException:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        raise
    if running:
        await asyncio.wait(running)
    return MapResult(_results(running), tuple(refused))


def _results(done: list[Future[R]] | list[asyncio.Task[R]]) -> tuple[R, ...]:
    """The results in order, or the first failure in order once every one was looked at."""
    errors = [item.exception() for item in done]
    for error in errors:
        if error is not None:
            raise error
    return tuple(item.result() for item in done)


def _release(block: Spend) -> None:
    hold = block._hold
    if hold is not None:
        hold.release()


async def _aenumerate(
    items: Iterable[T] | AsyncIterable[T],
) -> AsyncGenerator[tuple[int, T], None]:
    if isinstance(items, AsyncIterable):
        index = 0
        async for item in items:
            yield index, item
            index += 1
    else:
        for pair in enumerate(items):
            yield pair
