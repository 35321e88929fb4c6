"""A Ctrl-C at every point CPython could deliver one: nothing stays held afterwards.

CPython takes a pending signal at the start of a Python function and right after a call
returns. A profile function stands in for the signal: for k = 1, 2, ... it raises
``KeyboardInterrupt`` at the k-th such point reached inside spendguard during one use of
a face, until a use runs through without reaching a k-th point. After each, the next
reading of the guard must find nothing held, and the books must balance: what was spent
is what was charged, never less.

One point is beyond any Python context manager: the first instruction of a block's own
``__exit__``, before any of its code has run. The reading ends that hold too, once the
block's frame has stopped running; a coroutine's frame may be only waiting, so an
``async with`` block's hold stays listed there, for ``hold_ttl`` to end. (``asyncio.run``
turns a Ctrl-C into the main task's cancellation, which lands at an ``await``, not there.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import gc
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

import spendguard as sg

PACKAGE = str(Path(sg.__file__).parent)
_ids = itertools.count()


class Wallet:
    """An in-memory provider (no network, so every point reached is spendguard's own)."""

    name, unit = "wallet", "credits"

    def __init__(self) -> None:
        self.balance = Decimal(1000)
        self.account_id = f"wallet:interrupts:{next(_ids)}"

    def fetch_balance(self) -> Decimal:
        return self.balance

    def check(self, amount: Decimal) -> sg.Check:
        return sg.Check.of(amount, self.balance, self.unit, "remote")


class Interrupted(KeyboardInterrupt):
    """The stand-in signal, told apart from a real Ctrl-C."""


@contextlib.contextmanager
def interrupt_at(k: int, seen: list[str]) -> Iterator[None]:
    """Raise :class:`Interrupted` at the k-th signal point inside spendguard; its name
    goes to ``seen``."""
    count = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        if event not in ("call", "c_return") or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        count += 1
        if count == k:
            sys.setprofile(None)
            seen.append(f"{event} {frame.f_code.co_name}")
            raise Interrupted

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


def _spend(guard: sg.SpendGuard) -> None:
    with guard.spend(2):
        pass


def _spend_raising(guard: sg.SpendGuard) -> None:
    with guard.spend(2):
        raise ValueError


def _spend_settled(guard: sg.SpendGuard) -> None:
    with guard.spend(2) as hold:
        hold.settle(1)


def _spend_nested(guard: sg.SpendGuard) -> None:
    outer = guard.spend(2)
    with outer, outer:
        pass


def _aspend(guard: sg.SpendGuard) -> None:
    async def main() -> None:
        async with guard.spend(2):
            pass

    asyncio.run(main())


def _decorated(guard: sg.SpendGuard) -> None:
    guard(cost=2)(lambda: None)()


def _batch(guard: sg.SpendGuard) -> None:
    with guard.batch(range(3), 1) as batch:
        for _ in batch:
            pass


def _batch_left(guard: sg.SpendGuard) -> None:
    with guard.batch(range(3), 1) as batch:
        for _ in batch:
            break


def _abatch(guard: sg.SpendGuard) -> None:
    async def main() -> None:
        async with guard.abatch(range(3), 1) as batch:
            async for _ in batch:
                pass

    asyncio.run(main())


def _map(guard: sg.SpendGuard) -> None:
    guard.map(lambda item: item, range(3), cost=1, workers=1)


def _amap(guard: sg.SpendGuard) -> None:
    async def same(item: int) -> int:
        return item

    asyncio.run(guard.amap(same, range(3), cost=1, workers=1))


FACES: dict[str, Callable[[sg.SpendGuard], None]] = {
    "spend": _spend,
    "spend raising": _spend_raising,
    "spend settled inside": _spend_settled,
    "spend nested": _spend_nested,
    "async spend": _aspend,
    "decorated": _decorated,
    "batch": _batch,
    "batch left early": _batch_left,
    "async batch": _abatch,
    "map": _map,
    "async map": _amap,
}

# The first instruction of a block's own exit: no code of the block's can run there.
UNREACHABLE = {"call __exit__", "call __aexit__"}


# An interrupt in a coroutine's close() during the event loop's teardown is reported as
# unraisable: a fact of the stand-in signal, not of spendguard.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("face", FACES)
def test_an_interrupt_at_any_point_leaves_nothing_held(face: str) -> None:
    """Every signal point of one use of the face, each in turn: the next reading finds
    nothing held and at least what ran charged."""
    use = FACES[face]
    points: list[str] = []
    for k in itertools.count(1):
        guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
        guard.check(0)
        seen: list[str] = []
        with contextlib.suppress(Interrupted, ValueError), interrupt_at(k, seen):
            use(guard)
        if "async" in face:
            gc.collect(0)  # coroutines the interrupt left behind are closed now, unprofiled
        if not seen:
            break
        points += seen
        held = guard.held
        if held and seen[0] in UNREACHABLE and face == "async spend":
            # A coroutine's frame may be waiting, not ended: only hold_ttl can tell, so
            # the hold must stay listed for it.
            assert len(guard.holds()) == 1, seen
            guard.holds()[0].release()
            held = guard.held
        assert held == 0, f"{face}: interrupted at point {k} ({seen[0]}): {held} held"
        assert not guard.holds(), seen
        assert guard.spent <= 4, seen
    assert len(points) > 5, points  # the sweep reached into the face
    if "spend" in face:
        assert UNREACHABLE & set(points), points  # including the one no exit can act on


# -- blocks whose frame stopped running ------------------------------------------------------


def _interrupt_exits(frame: FrameType, event: str, arg: Any) -> None:
    """A profile function: a Ctrl-C at the first instruction of the next ``Spend.__exit__``."""
    if event == "call" and frame.f_code is sg.Spend.__exit__.__code__:
        sys.setprofile(None)
        raise Interrupted


def test_a_with_block_interrupted_as_its_exit_starts_is_settled_by_the_next_reading() -> None:
    """A Ctrl-C at ``__exit__``'s first instruction, before any of its code runs: once the
    exception has ended the block's frame, the next reading settles the block in full."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)

    def work() -> None:
        with guard.spend(2):
            sys.setprofile(_interrupt_exits)

    with pytest.raises(Interrupted):
        work()
    sys.setprofile(None)
    assert (guard.held, guard.spent, guard.holds()) == (0, 2, [])


def test_blocks_still_running_are_never_taken_for_abandoned() -> None:
    """Blocks open in another thread, in a waiting generator, in a waiting coroutine, and
    one entered by hand in a frame that then raised (to be left from elsewhere): readings
    leave them all held, and each ends once, by its own exit."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    inside, release = threading.Event(), threading.Event()

    def in_thread() -> None:
        with guard.spend(1):
            inside.set()
            release.wait(timeout=10)

    def in_generator() -> Iterator[int]:
        with guard.spend(2):
            yield 1

    manual = guard.spend(4)

    def enter_by_hand() -> sg.Hold:
        manual.__enter__()
        raise ValueError("a check after entering failed; the caller leaves the block later")

    async def in_coroutine(reached: asyncio.Event, go_on: asyncio.Event) -> None:
        async with guard.spend(8):
            reached.set()
            await go_on.wait()

    async def main() -> None:
        reached, go_on = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(in_coroutine(reached, go_on))
        await reached.wait()
        assert guard.held == 15
        go_on.set()
        await task

    thread = threading.Thread(target=in_thread)
    thread.start()
    assert inside.wait(timeout=10)
    generator = in_generator()
    next(generator)
    with pytest.raises(ValueError, match="check after entering"):
        enter_by_hand()
    (hold,) = [h for h in guard.holds() if h.amount == 4]
    assert (guard.held, len(guard.holds())) == (7, 3)
    asyncio.run(main())
    assert (guard.held, guard.spent) == (7, 8)
    release.set()
    thread.join(timeout=10)
    generator.close()
    assert (guard.held, guard.spent) == (4, 11)
    hold.settle(1)
    manual.__exit__(None, None, None)
    assert (hold.state, guard.held, guard.spent, guard.holds()) == ("settled", 0, 12, [])


# -- exception tables ---------------------------------------------------------------------


def _code_objects(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_objects(const)


# Code that runs only in threads of spendguard's own, where no signal is ever delivered.
HELPER_THREADS = {("_http.py", "_run"), ("sqlite.py", "_beat"), ("testing.py", "_arrive")}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception tables came with 3.11")
def test_no_with_block_lets_a_signal_skip_its_exit() -> None:
    """CPython 3.12 and 3.13 can leave a loop's backward jump inside a ``with`` block out
    of its exception table (an ``elif`` with no ``else`` last in the loop). A Ctrl-C taken
    at that jump skips the block's ``__exit__``: a lock stays held for good. No ``with``
    block in spendguard may have such a jump."""
    gaps = []
    for path in sorted(Path(PACKAGE).glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for code in _code_objects(compile(source, str(path), "exec")):
            listing = dis.Bytecode(code)
            entries = listing.exception_entries
            instructions = list(listing)
            for index, entering in enumerate(instructions):
                if entering.opname not in ("BEFORE_WITH", "BEFORE_ASYNC_WITH"):
                    continue
                body = instructions[index + 1].offset
                handlers = {e.target for e in entries if e.start <= body < e.end}
                spans = [e for e in entries if e.target in handlers]
                if not spans:
                    continue
                start, end = min(e.start for e in spans), max(e.end for e in spans)
                gaps += [
                    f"{path.name}:{code.co_name}:{jump.positions.lineno}"
                    for jump in instructions
                    if start <= jump.offset < end
                    and jump.opname == "JUMP_BACKWARD"
                    and jump.positions is not None
                    and jump.positions.lineno is not None  # none: the compiler's own
                    and (path.name, code.co_name) not in HELPER_THREADS
                    and not any(e.start <= jump.offset < e.end for e in entries)
                ]
    assert not gaps, gaps


def test_a_block_entered_while_a_reading_looks_is_not_taken_for_abandoned() -> None:
    """A thread entering a block in a new frame while another thread's reading walks the
    stacks: the block is registered after the registry was read, or its frame is on a
    stack; never settled from under its own body."""
    wallet = Wallet()
    wallet.balance = Decimal(10**9)
    guard = sg.SpendGuard(wallet, ttl=3600, hold_ttl=None)
    stop = threading.Event()
    wrong: list[str] = []

    def one_block() -> None:
        with guard.spend(1) as hold:
            if hold.state != "held":
                wrong.append(hold.state)

    def worker() -> None:
        while not stop.is_set():
            one_block()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            guard.held  # noqa: B018 - a reading, for its sweep
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        sys.setswitchinterval(switch)
    assert wrong == []
    assert (guard.held, guard.holds()) == (0, [])


def test_a_thread_sweeps_only_its_own_stopped_blocks() -> None:
    """A block a worker thread's Ctrl-C stranded at ``__exit__``'s first instruction: the
    main thread's reading leaves it (it never reads another thread's stack), the worker's
    own next reading settles it."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    stranded, read, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[object] = []

    def work() -> None:
        with guard.spend(2):
            sys.setprofile(_interrupt_exits)

    def worker() -> None:
        with contextlib.suppress(Interrupted):
            work()
        stranded.set()
        read.wait(timeout=10)
        seen.append(guard.held)
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert stranded.wait(timeout=10)
    assert (guard.held, len(guard.holds())) == (2, 1)
    read.set()
    assert done.wait(timeout=10)
    thread.join(timeout=10)
    assert seen == [0]
    assert (guard.held, guard.spent, guard.holds()) == (0, 2, [])


def test_readings_and_stray_exits_never_read_other_threads_stacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Following ``f_back`` from another running thread's frame can crash CPython 3.11: no
    reading and no exit from another frame asks for other threads' frames."""

    def refuse() -> dict[int, FrameType]:
        raise AssertionError("another thread's stack was read")

    monkeypatch.setattr(sys, "_current_frames", refuse)
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    inside, release = threading.Event(), threading.Event()

    def in_thread() -> None:
        with guard.spend(1):
            inside.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=in_thread)
    thread.start()
    assert inside.wait(timeout=10)
    stack = contextlib.ExitStack()
    stack.enter_context(guard.spend(1))
    assert (guard.held, guard.spent, guard.available()) == (2, 0, 998)
    stack.close()
    release.set()
    thread.join(timeout=10)
    assert (guard.held, guard.spent, guard.holds()) == (0, 2, [])


def test_a_block_another_thread_entered_by_hand_is_left_once_that_thread_ended() -> None:
    """A ``Spend`` left more often than this thread entered it never takes a block a live
    thread entered by hand; once that thread has ended, its block may be left from here.
    A block an exit stack entered may be left from any thread."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    block, other = guard.spend(3), guard.spend(5)
    entered, finish = threading.Event(), threading.Event()
    holds: dict[str, sg.Hold] = {}
    stack = contextlib.ExitStack()

    def worker() -> None:
        holds["hand"] = block.__enter__()
        holds["stack"] = stack.enter_context(other)
        entered.set()
        finish.wait(timeout=10)

    thread = threading.Thread(target=worker)
    thread.start()
    assert entered.wait(timeout=10)
    with pytest.raises(RuntimeError, match="left more times"):
        block.__exit__(None, None, None)
    stack.close()  # handed over: the worker is still running
    assert (holds["hand"].state, holds["stack"].state) == ("held", "settled")
    finish.set()
    thread.join(timeout=10)
    block.__exit__(None, None, None)
    assert (holds["hand"].state, guard.held, guard.spent) == ("settled", 0, 8)


def test_exit_stacks_end_their_own_block_of_a_shared_spend() -> None:
    """Two exit stacks in one thread, each entering the same (cached) Spend, the inner one
    from a helper that returned: closing the inner stack ends its own block."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    outer, inner = contextlib.ExitStack(), contextlib.ExitStack()
    whole = outer.enter_context(guard.spend(1))

    def step() -> sg.Hold:
        return inner.enter_context(guard.spend(1))

    part = step()
    inner.close()
    assert (part.state, whole.state) == ("settled", "held")
    whole.settle("0.5")
    outer.close()
    assert (guard.spent, guard.held) == (Decimal("1.5"), 0)


def test_a_block_left_from_elsewhere_is_never_a_with_statements_own() -> None:
    """A block a ``with`` statement entered is left by that statement alone: an exit stack
    closed, or a block entered by hand left from another function, inside such a block of
    the same (cached) Spend ends its own block."""
    guard = sg.SpendGuard(Wallet(), ttl=3600, hold_ttl=None)
    stack = contextlib.ExitStack()
    with guard.spend(1) as mine:
        theirs = stack.enter_context(guard.spend(1))
        stack.close()
        assert (theirs.state, mine.state) == ("settled", "held")
        mine.settle("0.25")
    assert (guard.spent, guard.held) == (Decimal("1.25"), 0)

    def enter_by_hand() -> sg.Hold:
        return guard.spend(2).__enter__()

    def leave_by_hand() -> None:
        guard.spend(2).__exit__(None, None, None)

    by_hand = enter_by_hand()
    with guard.spend(2) as inside:
        leave_by_hand()
        assert (by_hand.state, inside.state) == ("settled", "held")
    assert (guard.spent, guard.held, guard.holds()) == (Decimal("5.25"), 0, [])
