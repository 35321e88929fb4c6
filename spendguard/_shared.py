"""A guard's side of a shared ledger: budget, failure policies, and this process's mirror.

The ledger (Redis) decides for the whole fleet. The guard keeps, as without a ledger, its
own budget and floor, and mirrors what its process holds and spends into its in-process
account, so that :class:`Hold` objects keep their bookkeeping and the fallback to the
in-process ledger (``on_ledger_error="local"``) starts from what this process knows.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Generic, TypeVar

from ._errors import BalanceUnavailable, LedgerError, ProviderError
from ._ledger import Admission, Ledger
from ._money import format_amount

if TYPE_CHECKING:
    from ._guard import SpendGuard, _Outcome
    from ._hold import Hold

log = logging.getLogger("spendguard")

_ZERO = Decimal(0)
_LOCAL_FOR = 1.0
"""Seconds a guard decides locally after a ledger error (``"local"``) before trying again."""
_MAX_UNRECORDED = 1000

_local_only: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "spendguard_local_only", default=False
)
"""Set while a guard decides from its in-process ledger on the shared ledger's behalf."""

T = TypeVar("T")

# A decision made against the ledger: its outcome, and the ledger hold it took (if any).
_Taken = tuple["_Outcome", str | None]


class SharedAccount:
    """One guard's view of its account in a shared :class:`Ledger`.

    Holds taken in the ledger are remembered by amount, oldest first: a decorated call
    ends with only its amount known, and holds of one amount are interchangeable. Holds
    admitted by the local fallback are counted apart and ended first, so that a ledger
    hold is never ended before its call is (which would let others spend its credit).
    """

    def __init__(self, guard: SpendGuard, ledger: Ledger) -> None:
        self._guard = guard
        self.ledger = ledger
        self._account_id = guard.provider.account_id
        self._lock = guard._lock
        self._holds: dict[Decimal, deque[str]] = {}
        self._local: dict[Decimal, int] = {}
        self._ending: set[Hold] = set()
        self._unrecorded: list[tuple[str | None, Decimal | None]] = []
        self._local_until = -math.inf

    def __repr__(self) -> str:
        return f"<SharedAccount {self._guard.name!r} on {self.ledger!r}>"

    # -- decisions -----------------------------------------------------------------------

    def decide(self, amount: Decimal, hold: bool, blocking: bool) -> _Outcome | None:
        """Decide against the ledger; ``None`` when the in-process path is to decide."""
        if _local_only.get():
            return None
        if self._guard._clock() < self._local_until:
            return self._decide_locally(amount, hold, blocking)
        try:
            taken = self._take(amount, hold, blocking)
        except LedgerError as exc:
            self._on_ledger_error(exc)
            return self._decide_locally(amount, hold, blocking)
        return self._conclude(amount, hold, blocking, taken)

    async def adecide(self, amount: Decimal, hold: bool, blocking: bool) -> _Outcome | None:
        """:meth:`decide` for coroutines: the ledger is asked from a worker thread.

        A task cancelled while it waits takes nothing: whatever the thread took by then
        is given back, by the thread itself or, if it finished first, here.
        """
        if _local_only.get():
            return None
        if self._guard._clock() < self._local_until:
            return await self._adecide_locally(amount, hold, blocking)
        handoff: _Handoff[_Taken] = _Handoff(functools.partial(self._undo, amount, hold))
        try:
            taken = await asyncio.to_thread(handoff.run, self._take, amount, hold, blocking)
        except asyncio.CancelledError:
            handoff.abandon()
            raise
        except LedgerError as exc:
            self._on_ledger_error(exc)
            return await self._adecide_locally(amount, hold, blocking)
        return self._conclude(amount, hold, blocking, taken)

    def _take(self, amount: Decimal, hold: bool, blocking: bool) -> _Taken:
        """Budget, ledger, failure policy and shadow mode; blocking, so maybe in a thread.

        On return an admitted hold is counted in the mirror and a refused one is not; on
        an exception nothing is held anywhere.
        """
        guard = self._guard
        account = guard._account
        self._expire_local()
        self._flush()
        with self._lock:
            left = None if guard.budget is None else guard.budget - guard._spent - guard._held
            over_budget = left is not None and left < amount
            if over_budget:
                guard._hits += 1
            elif hold:
                account.held += amount
                guard._held += amount
        if over_budget:
            assert left is not None
            outcome: _Outcome = (False, left, "cache", None, False, "budget")
            return outcome, self._shadow_hold(amount, hold, blocking)
        try:
            outcome, hold_id = self._admit(amount, hold, left)
        except BaseException:
            self._unreserve(amount, hold)
            raise
        if not outcome[0]:
            self._unreserve(amount, hold)
            return outcome, self._shadow_hold(amount, hold, blocking)
        return outcome, hold_id

    def _admit(self, amount: Decimal, hold: bool, left: Decimal | None) -> _Taken:
        guard = self._guard
        try:
            answer = self.ledger.admit(
                self._account_id,
                amount,
                floor=guard.floor,
                hold_ttl=self._hold_ttl() if hold else None,
                ttl=guard.ttl,
                refresh_interval=guard.refresh_interval,
                lookup=guard._provider.check,
                max_stale=guard.max_stale if guard.on_unavailable == "stale" else None,
            )
        except ProviderError as exc:
            return self._on_provider_error(amount, hold, left, exc)
        with self._lock:
            if answer.check is not None:
                guard._lookups += 1
            if answer.source == "cache":
                guard._hits += 1
            else:
                guard._misses += 1
        available = _within(answer.available, left)
        if answer.admitted:
            return (True, available, answer.source, answer.age, True, None), answer.hold_id
        note = None if available < amount else "remote"
        return (False, available, answer.source, answer.age, False, note), None

    def _on_provider_error(
        self, amount: Decimal, hold: bool, left: Decimal | None, exc: ProviderError
    ) -> _Taken:
        """The guard's failure policy, as ``SpendGuard._on_error`` applies it locally."""
        guard = self._guard
        policy = guard.on_unavailable
        transient = isinstance(exc, BalanceUnavailable)
        kind = type(exc).__name__
        with self._lock:
            guard._misses += 1
            guard._lookups += 1
            guard._errors[kind] = guard._errors.get(kind, 0) + 1
        if transient and policy == "stale":
            answer = self.ledger.admit(
                self._account_id,
                amount,
                floor=guard.floor,
                hold_ttl=self._hold_ttl() if hold else None,
                ttl=guard.ttl,
                refresh_interval=guard.refresh_interval,
                lookup=None,
                max_stale=guard.max_stale,
            )
            if answer.available is not None:
                with self._lock:
                    guard._fallbacks += 1
                available = _within(answer.available, left)
                admitted = answer.admitted and available >= amount
                if answer.hold_id is not None and not admitted:
                    self.ledger.end(self._account_id, answer.hold_id, None)
                outcome: _Outcome = (admitted, available, "fallback", answer.age, admitted, kind)
                return outcome, answer.hold_id if admitted else None
        if not ((transient and policy == "allow") or not guard.enforce):
            raise exc
        held = None
        if hold:
            held = self.ledger.hold(self._account_id, amount, hold_ttl=self._hold_ttl())
        with self._lock:
            guard._fallbacks += 1
        log.warning(
            "%s: balance unavailable (%s); letting %s through (%s)",
            guard.name,
            exc.message,
            format_amount(amount, guard.unit),
            "on_unavailable='allow'" if transient and policy == "allow" else "enforce=False",
        )
        if held is None or held.available is None:
            unknown: _Outcome = (True, _within(None, left), "fallback", None, None, kind)
            return unknown, None if held is None else held.hold_id
        available = _within(held.available - guard.floor, left)
        return (True, available, "fallback", held.age, None, kind), held.hold_id

    def _shadow_hold(self, amount: Decimal, hold: bool, blocking: bool) -> str | None:
        """In shadow mode a refused call runs anyway: hold its cost in the ledger too (the
        guard's ``_conclude`` counts it in the mirror)."""
        if not (hold and blocking and not self._guard.enforce):
            return None
        return self.ledger.hold(self._account_id, amount, hold_ttl=self._hold_ttl()).hold_id

    def _conclude(self, amount: Decimal, hold: bool, blocking: bool, taken: _Taken) -> _Outcome:
        outcome, hold_id = taken
        if hold_id is not None:
            with self._lock:
                self._holds.setdefault(amount, deque()).append(hold_id)
        return self._guard._conclude(amount, hold, blocking, outcome)

    def _undo(self, amount: Decimal, hold: bool, taken: _Taken) -> None:
        """Give back what an abandoned decision took (its task was cancelled)."""
        outcome, hold_id = taken
        if hold_id is not None:
            try:
                self.ledger.end(self._account_id, hold_id, None)
            except LedgerError as exc:
                self._unrecorded_end(hold_id, None, exc)
        if outcome[0]:
            self._unreserve(amount, hold)

    def _unreserve(self, amount: Decimal, hold: bool) -> None:
        if hold:
            with self._lock:
                self._guard._account.held -= amount
                self._guard._held -= amount

    # -- the in-process fallback ---------------------------------------------------------

    def _on_ledger_error(self, exc: LedgerError) -> None:
        """``"raise"`` re-raises; ``"local"`` switches to the in-process ledger for a while."""
        if self.ledger.on_ledger_error != "local":
            raise exc
        self._local_until = self._guard._clock() + _LOCAL_FOR
        log.warning(
            "%s: ledger unavailable (%s); deciding from this process's own ledger for %g s "
            "(on_ledger_error='local')",
            self._guard.name,
            exc,
            _LOCAL_FOR,
        )

    def _decide_locally(self, amount: Decimal, hold: bool, blocking: bool) -> _Outcome:
        token = _local_only.set(True)
        try:
            outcome = self._guard._decide(amount, hold, blocking)
        finally:
            _local_only.reset(token)
        self._count_local(amount, hold, outcome)
        return outcome

    async def _adecide_locally(self, amount: Decimal, hold: bool, blocking: bool) -> _Outcome:
        token = _local_only.set(True)
        try:
            outcome = await self._guard._adecide(amount, hold, blocking)
        finally:
            _local_only.reset(token)
        self._count_local(amount, hold, outcome)
        return outcome

    def _count_local(self, amount: Decimal, hold: bool, outcome: _Outcome) -> None:
        if hold and outcome[0]:
            with self._lock:
                self._local[amount] = self._local.get(amount, 0) + 1

    # -- ending holds --------------------------------------------------------------------

    def finish(self, amount: Decimal, charged: Decimal | None) -> None:
        """A decorated call of ``amount`` ended; the guard then updates its mirror."""
        with self._lock:
            hold_id = self._pop(amount)
        self._end(hold_id, charged)

    def end_hold(self, hold: Hold, charged: Decimal | None) -> None:
        """``hold`` is being settled or released; only its first ending counts."""
        with self._lock:
            ending = self._ending
            if ending:
                ending.difference_update([h for h in ending if h._state not in _OPEN])
            if hold._state not in _OPEN or hold in ending:
                return
            ending.add(hold)
            hold_id = self._pop(hold.amount)
        self._end(hold_id, charged)

    def renew_hold(self, hold: Hold) -> None:
        """Push back the ledger's expiry of ``hold``, which its owner still uses (a batch's,
        after an item); never raises: a failure is logged and the hold may expire.

        Ledger holds are known by amount only (see :meth:`_pop`), and any of them may be
        ended for ``hold``, so every open ledger hold of ``hold.amount`` in this process is
        renewed (one round trip each; usually there is one). Needs a ledger with the
        optional ``renew``; a local hold (``on_ledger_error="local"``) has nothing to renew.
        """
        renew: Callable[[str, str, float], bool] | None = getattr(self.ledger, "renew", None)
        if renew is None or hold._state != "held":
            return
        if self._guard._clock() < self._local_until:
            return
        with self._lock:
            hold_ids = list(self._holds.get(hold.amount, ()))
        ttl = self._hold_ttl()
        for hold_id in hold_ids:
            try:
                renew(self._account_id, hold_id, ttl)
            except LedgerError as exc:
                log.warning(
                    "%s: could not renew a batch's hold in the ledger (%s); it expires there "
                    "unless a later renewal reaches it",
                    self._guard.name,
                    exc,
                )
                return

    def _pop(self, amount: Decimal) -> str | None:
        """The ledger hold to end for a call of ``amount`` (``None``: a local one)."""
        local = self._local.get(amount)
        if local:
            self._local[amount] = local - 1
            return None
        waiting = self._holds.get(amount)
        if not waiting:
            return None
        hold_id = waiting.popleft()
        if not waiting:
            del self._holds[amount]
        return hold_id

    def _end(self, hold_id: str | None, charged: Decimal | None) -> None:
        if hold_id is None and not charged:
            return
        if self._guard._clock() < self._local_until:
            self._unrecorded_end(hold_id, charged, None)
            return
        try:
            self.ledger.end(self._account_id, hold_id, charged)
        except LedgerError as exc:
            self._unrecorded_end(hold_id, charged, exc)

    def _unrecorded_end(
        self, hold_id: str | None, charged: Decimal | None, exc: LedgerError | None
    ) -> None:
        if exc is not None:
            log.warning(
                "%s: could not end a hold in the ledger (%s); retrying with the next "
                "decision, and the hold expires meanwhile",
                self._guard.name,
                exc,
            )
        with self._lock:
            pending = self._unrecorded
            pending.append((hold_id, charged))
            if len(pending) > _MAX_UNRECORDED:
                total = sum((c for _, c in pending if c is not None), _ZERO)
                self._unrecorded = [(None, total)]

    def _flush(self) -> None:
        """Retry the endings that could not reach the ledger, oldest first."""
        if not self._unrecorded:
            return
        with self._lock:
            pending, self._unrecorded = self._unrecorded, []
        for done, (hold_id, charged) in enumerate(pending):
            try:
                self.ledger.end(self._account_id, hold_id, charged)
            except LedgerError:
                with self._lock:
                    self._unrecorded[:0] = pending[done:]
                raise

    # -- reading ----------------------------------------------------------------------

    def balance(self) -> Decimal | None:
        """The fleet's snapshot minus spending since; ``None``: ask the local ledger."""
        seen = self._read(with_floor=False)
        return None if seen is None else _within(seen.available, None) + seen.held

    async def abalance(self) -> Decimal | None:
        """:meth:`balance` for coroutines (in a worker thread)."""
        return await asyncio.to_thread(self.balance)

    def available(self) -> Decimal | None:
        """What the guard could spend now, fleet-wide and within its budget; ``None``:
        ask the local ledger."""
        seen = self._read(with_floor=True)
        if seen is None:
            return None
        guard = self._guard
        with self._lock:
            left = None if guard.budget is None else guard.budget - guard._spent - guard._held
        return _within(seen.available, left)

    async def aavailable(self) -> Decimal | None:
        """:meth:`available` for coroutines (in a worker thread)."""
        return await asyncio.to_thread(self.available)

    def _read(self, *, with_floor: bool) -> Admission | None:
        guard = self._guard
        if _local_only.get() or guard._clock() < self._local_until:
            return None
        self._expire_local()
        try:
            self._flush()
            answer = self.ledger.admit(
                self._account_id,
                _ZERO,
                floor=guard.floor if with_floor else _ZERO,
                hold_ttl=None,
                ttl=guard.ttl,
                refresh_interval=guard.refresh_interval,
                lookup=guard._provider.check,
            )
        except LedgerError as exc:
            self._on_ledger_error(exc)
            return None
        if answer.check is not None:
            with self._lock:
                guard._lookups += 1
        return answer

    def invalidate(self) -> None:
        """Make every process look the balance up again; never raises."""
        try:
            self.ledger.invalidate(self._account_id)
        except LedgerError as exc:
            log.warning("%s: could not invalidate the shared balance: %s", self._guard.name, exc)

    def _expire_local(self) -> None:
        """Expire this process's overdue holds and run deferred endings, as a decision on
        the in-process ledger does (the ledger expires its own copies by itself)."""
        now = self._guard._clock()
        if now >= self._guard._account.next_expiry:
            self._guard._expire_holds(now)

    def _hold_ttl(self) -> float:
        ttl = self._guard.hold_ttl
        return math.inf if ttl is None else ttl


_OPEN = ("held", "expired")


def attach(guard: SpendGuard, ledger: Ledger) -> SharedAccount:
    """``guard``'s account in ``ledger``.

    Raises:
        TypeError: ``ledger`` does not implement :class:`Ledger`.
    """
    if not isinstance(ledger, Ledger):
        raise TypeError(f"ledger must implement spendguard.Ledger, got {type(ledger).__name__}")
    return SharedAccount(guard, ledger)


def _within(available: Decimal | None, left: Decimal | None) -> Decimal:
    value = _ZERO if available is None else available
    return value if left is None else min(value, left)


class _Handoff(Generic[T]):
    """Hands a worker thread's result to a coroutine, or to ``undo`` if the coroutine was
    cancelled meanwhile: whichever side comes second gives the result back."""

    def __init__(self, undo: Callable[[T], None]) -> None:
        self._undo = undo
        self._lock = threading.Lock()
        self._abandoned = False
        self._result: list[T] = []

    def run(self, fn: Callable[..., T], *args: object) -> T:
        result = fn(*args)
        with self._lock:
            if not self._abandoned:
                self._result.append(result)
                return result
        self._undo(result)
        return result

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            finished = self._result
        if finished:
            threading.Thread(target=self._undo, args=(finished[0],)).start()
