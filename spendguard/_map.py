"""The budget-aware ``map``: run a function over items, admitting only what the balance
covers, and report what was refused.

Each item's :class:`~spendguard.Hold` exists before its decision and is ended by whoever
comes last: the item's own run, or ``map`` itself when the run never started (a pool that
refused the work, a task cancelled before its first step).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from ._batch import pricer
from ._decorate import is_async
from ._errors import ConfigurationError, InsufficientCredits
from ._hold import Hold
from ._money import from_atoms

if TYPE_CHECKING:
    from ._batch import ItemCost
    from ._engine import Engine

T = TypeVar("T")
R = TypeVar("R")


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
        items: The items that ran, in order: ``items[i]`` gave ``results[i]``.
        indexes: Their positions among all the items given to ``map``.
    """

    results: tuple[R, ...]
    refused: tuple[Refusal[T], ...]
    items: tuple[T, ...] = ()
    indexes: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every item ran."""
        return not self.refused

    def pairs(self) -> Iterator[tuple[T, R]]:
        """Each item that ran with its result, in order."""
        return zip(self.items, self.results, strict=True)

    def __repr__(self) -> str:
        return f"<MapResult {len(self.results)} ran, {len(self.refused)} refused>"


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive integer, got {workers!r}")


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _hold(engine: Engine, atoms: int, label: str) -> Hold:
    return Hold(engine, from_atoms(atoms), atoms, label)


def _release_all(running: list[tuple[int, T, Future[R], Hold]]) -> None:
    """Release every item's hold (a no-op for each whose run ended it). A function of its
    own: as the last loop of a ``finally`` around a ``with``, CPython 3.12 and 3.13 leave
    its backward jump out of the exception table."""
    for *_, hold in running:
        hold.release()


def _check_sync(fn: object, name: str) -> None:
    if is_async(fn):
        raise TypeError(
            f"map() runs {name} in threads, but it is a coroutine function: "
            "use `await guard.amap(...)`"
        )


def _ran(result: R, name: str, hold: Hold) -> R:
    """``result`` of a ``map`` item, unless it is an awaitable: then nothing of it ran, and
    its hold is released, the coroutine closed and a ``TypeError`` raised."""
    if not inspect.isawaitable(result):
        return result
    hold.release()
    if inspect.iscoroutine(result):
        result.close()  # never awaited: no "never awaited" warning for the caller to chase
    raise TypeError(
        f"map() called {name}, which returned {type(result).__name__} without running "
        "it; use `await guard.amap(...)` for coroutine functions"
    )


def _awaitable(step: Awaitable[R], name: str) -> Awaitable[R]:
    """What an ``amap`` item's function returned, to be awaited.

    Raises:
        TypeError: It is not awaitable (the function ran: a plain function).
    """
    if not inspect.isawaitable(step):
        raise TypeError(
            f"amap() awaits what {name} returns, but it returned {type(step).__name__} "
            "(it ran, and is charged); use guard.map(...) for plain functions"
        )
    return step


def map_items(
    engine: Engine,
    fn: Callable[[T], R],
    items: Iterable[T],
    cost: ItemCost[T],
    workers: int,
) -> MapResult[T, R]:
    """Everything :meth:`SpendGuard.map` does."""
    _check_workers(workers)
    price = pricer(cost)
    name = _name(fn)
    _check_sync(fn, name)
    slots = threading.BoundedSemaphore(workers)
    failed = threading.Event()
    running: list[tuple[int, T, Future[R], Hold]] = []
    refused: list[Refusal[T]] = []

    def run(hold: Hold, item: T) -> R:
        try:
            try:
                result = _ran(fn(item), name, hold)
            except BaseException as exc:
                failed.set()
                engine.end_block(hold, hold.cost, exc)
                raise
            engine.end_block(hold, hold.cost, None)
            return result
        finally:
            slots.release()

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="spendguard-map") as pool:
            for index, item in enumerate(items):
                hold = _hold(engine, price(item), f"{name}[{index}]")
                slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                try:
                    engine.admit(hold, hold.cost)
                except InsufficientCredits as error:
                    slots.release()
                    refused.append(Refusal(index, item, error))
                    continue
                except BaseException:
                    slots.release()
                    hold.release()  # a signal may land once it holds
                    raise
                try:
                    running.append((index, item, pool.submit(run, hold, item), hold))
                except BaseException:
                    slots.release()
                    hold.release()
                    raise
    finally:
        _release_all(running)
    return _result([(i, item, future) for i, item, future, _ in running], refused)


async def amap_items(
    engine: Engine,
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
    running: list[tuple[int, T, asyncio.Task[R], Hold]] = []
    refused: list[Refusal[T]] = []

    async def run(hold: Hold, item: T) -> R:
        try:
            try:
                result = await _awaitable(fn(item), name)
            except BaseException as exc:
                failed.set()
                engine.end_block(hold, hold.cost, exc)
                raise
            engine.end_block(hold, hold.cost, None)
            return result
        finally:
            slots.release()

    try:
        async with contextlib.aclosing(_aenumerate(items)) as numbered:
            async for index, item in numbered:
                hold = _hold(engine, price(item), f"{name}[{index}]")
                await slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                try:
                    await engine.aadmit(hold, hold.cost)
                except InsufficientCredits as error:
                    slots.release()
                    refused.append(Refusal(index, item, error))
                    continue
                except BaseException:
                    slots.release()
                    hold.release()
                    raise
                running.append((index, item, asyncio.create_task(run(hold, item)), hold))
        if running:
            await asyncio.wait([task for _, _, task, _ in running])
    except BaseException:
        tasks = [task for _, _, task, _ in running]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        raise
    finally:
        # A task cancelled before its first step never ran its body: end its hold here.
        for *_, hold in running:
            hold.release()
    return _result([(i, item, task) for i, item, task, _ in running], refused)


def _result(
    done: list[tuple[int, T, Future[R]]] | list[tuple[int, T, asyncio.Task[R]]],
    refused: list[Refusal[T]],
) -> MapResult[T, R]:
    """The results in order, or the first failure in order once every one was looked at."""
    errors = [future.exception() for _, _, future in done]
    for error in errors:
        if error is not None:
            raise error
    return MapResult(
        tuple(future.result() for _, _, future in done),
        tuple(refused),
        tuple(item for _, item, _ in done),
        tuple(index for index, _, _ in done),
    )


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
