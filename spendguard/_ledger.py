"""The in-process ledger: one shared balance snapshot and one set of holds per account."""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from itertools import islice
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import attrs

from ._check import Check, Source
from ._errors import ProviderError

if TYPE_CHECKING:
    from ._guard import SpendGuard
    from ._hold import Hold

Clock = Callable[[], float]


class Account:
    """One account's state in this process, shared by every guard on it.

    ``balance`` is the last looked-up balance, taken at ``balance_at``; ``fetched_at`` is
    the same time while the snapshot may be trusted, ``None`` once invalidated. ``spent``
    is what guarded calls spent since that lookup began, ``limit`` is ``balance - spent``
    (kept, not computed: a decision then subtracts once) and ``held`` is what calls in
    flight hold. Read and write these under ``lock``.
    ``lookups`` counts finished lookups; it lets a thread that waited for someone else's
    lookup use that answer instead of making its own (single-flight).

    ``holds`` are the :class:`Hold` objects open now, oldest first, and ``next_expiry``
    is no later than the earliest time one of them may expire, so that a decision looks
    for expired holds only when ``now >= next_expiry``. ``deferred`` collects endings
    that a garbage-collection finalizer could not perform on the spot; setting
    ``next_expiry`` to minus infinity makes the next decision perform them.

    ``ended`` lists decorated calls that ended, with their guard and amount, whose
    amount still counts as held rather than spent: appending to a deque is thread-safe
    without ``lock``, which keeps a second lock section off every guarded call.
    ``balance - spent - held`` is the same either way; :meth:`settle_ended` moves them
    to spent before anything reads ``spent`` or ``held`` on their own.
    """

    __slots__ = (
        "__weakref__",
        "account_id",
        "balance",
        "balance_at",
        "deferred",
        "ended",
        "failure",
        "fetched_at",
        "held",
        "holds",
        "limit",
        "lock",
        "lookups",
        "next_expiry",
        "refresh_lock",
        "settle_lock",
        "spent",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.settle_lock = threading.Lock()
        self.balance: Decimal | None = None
        self.limit: Decimal | None = None
        self.fetched_at: float | None = None
        self.balance_at: float | None = None
        self.spent = Decimal(0)
        self.held = Decimal(0)
        self.lookups = 0
        self.failure: tuple[int, ProviderError] | None = None
        self.holds: dict[Hold, None] = {}
        self.next_expiry = math.inf
        self.deferred: list[Callable[[], None]] = []
        self.ended: deque[tuple[SpendGuard, Decimal]] = deque()

    def refresh(
        self, check: Callable[[Decimal], Check], beyond: Decimal, seen: int, clock: Clock
    ) -> Check | None:
        """Ask ``check(beyond + held)`` unless another thread finished a lookup since
        ``seen`` was read.

        Returns the lookup's answer, or ``None`` when another thread's fresh snapshot
        is to be used instead. Re-raises the error of a lookup that failed while this
        thread waited, so that a failing provider sees one request per burst, not one per
        caller. Spending that ends while the lookup is in flight stays counted.
        """
        with self.refresh_lock:
            self.settle_ended()
            with self.lock:
                if self.lookups != seen:
                    failure = self.failure
                    if failure is not None and failure[0] == self.lookups:
                        raise copy.copy(failure[1]) from failure[1]
                    if self.fetched_at is not None:
                        return None
                started = clock()
                spent_before = self.spent
                asked = beyond + self.held
            try:
                result = check(asked)
            except ProviderError as exc:
                with self.lock:
                    self.lookups += 1
                    self.failure = (self.lookups, exc)
                raise
            with self.lock:
                self.balance = result.available
                self.fetched_at = self.balance_at = started
                self.spent -= spent_before
                self.limit = self.balance - self.spent
                self.lookups += 1
                self.failure = None
            return result

    def settle_ended(self, wait: bool = True) -> None:
        """Move the amounts in ``ended`` from held to spent, for the account and each guard.

        ``wait=False`` returns at once when another thread is at it (keeping ``ended``
        short is all that caller needs).
        """
        ended = self.ended
        if not ended or not self.settle_lock.acquire(wait):
            return
        try:
            # One thread pops at a time, so the len() entries are there; popped and
            # counted in C. Not under ``lock``: a call inside its sections may hand over
            # the GIL while holding it, and every other thread then queues on it.
            counts = Counter(islice(iter(ended.popleft, None), len(ended)))
            for (guard, amount), times in counts.items():
                moved = amount * times
                with self.lock:
                    self.held -= moved
                    self.spent += moved
                    if self.limit is not None:
                        self.limit -= moved
                    guard._held -= moved
                    guard._spent += moved
        finally:
            self.settle_lock.release()

    def invalidate(self) -> None:
        """Forget the snapshot's freshness; the next decision looks the balance up."""
        with self.lock:
            self.fetched_at = None

    def add_hold(self, hold: Hold) -> None:
        """List ``hold`` as open (its amount is already counted in ``held``)."""
        with self.lock:
            self.holds[hold] = None
            self.next_expiry = min(self.next_expiry, hold.expires_at)

    def defer(self, ending: Callable[[], None]) -> None:
        """Have the next decision call ``ending``; never blocks, never takes ``lock``.

        For finalizers run by the garbage collector, which may run in a thread that
        already holds ``lock``.
        """
        self.deferred.append(ending)
        self.next_expiry = -math.inf

    def expire(self, now: float) -> list[tuple[Hold, float]]:
        """Run deferred endings, then expire the holds due by ``now``.

        Returns:
            Each expired hold with its age in seconds, for the caller to report.
        """
        while True:
            try:
                ending = self.deferred.pop()
            except IndexError:
                break
            ending()
        expired: list[tuple[Hold, float]] = []
        with self.lock:
            if now < self.next_expiry:
                return expired
            next_expiry = math.inf
            for hold in list(self.holds):
                if hold.expires_at <= now:
                    hold._expire_locked()
                    del self.holds[hold]
                    expired.append((hold, now - hold.created_at))
                elif hold.expires_at < next_expiry:
                    next_expiry = hold.expires_at
            self.next_expiry = next_expiry
            # A finalizer may have deferred an ending since the queue was emptied; its
            # minus infinity must not be overwritten.
            if self.deferred:
                self.next_expiry = -math.inf
        return expired


class LocalLedger:
    """Hands out one :class:`Account` per account and clock, for as long as it is used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: weakref.WeakValueDictionary[tuple[str, Clock], Account] = (
            weakref.WeakValueDictionary()
        )

    def account(self, account_id: str, clock: Clock) -> Account:
        """The shared account for ``account_id`` as seen through ``clock``."""
        key = (account_id, clock)
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                account = self._accounts[key] = Account(account_id)
            return account

    def reset(self) -> None:
        """Forget every account: guards built from now on start afresh, and guards built
        before look their balance up again (their open holds stay their own)."""
        with self._lock:
            accounts = list(self._accounts.values())
            self._accounts.clear()
        for account in accounts:
            account.invalidate()


DEFAULT_LEDGER = LocalLedger()


# -- shared ledgers: one account's state kept outside the process -------------------------


@attrs.frozen
class Admission:
    """A shared ledger's answer to :meth:`Ledger.admit` and :meth:`Ledger.hold`.

    Attributes:
        admitted: Whether the amount fits; when a hold was asked for, it is now held.
        available: Balance minus spending since, open holds (before this one) and the
            floor, across every process; ``None`` when no usable balance is known.
        held: What the open holds of every process add up to, this one included.
        source: ``"cache"`` when decided from the fleet's snapshot as it stood,
            ``"remote"`` when a lookup (by this process or another) came first.
        age: Seconds since the balance behind the answer was looked up, on the ledger's
            clock; ``None`` when none is known.
        hold_id: The hold's name in the ledger, for :meth:`Ledger.end`.
        check: The provider's answer, when this call made the lookup itself.
    """

    admitted: bool
    available: Decimal | None
    held: Decimal
    source: Source
    age: float | None
    hold_id: str | None = None
    check: Check | None = None


@runtime_checkable
class Ledger(Protocol):
    """Where guards in many processes keep one account's state together.

    Per account (the provider's ``account_id``): the balance snapshot and when it was
    looked up, what was spent since, and the open holds with their expiry. Pass one to
    ``SpendGuard(provider, ledger=...)``; :class:`spendguard.redis.RedisLedger` is the
    bundled implementation. Without one, a guard keeps this state in its own process.

    Each method is atomic across every process using the ledger; times come from the
    ledger, not from the processes. Amounts are ``Decimal`` in the provider's unit.
    Budgets and floors stay with each guard: the ledger only sees the floor it is given.
    Any method may raise :class:`~spendguard.LedgerError` when the ledger cannot be used.

    A ledger may also offer ``renew(account_id, hold_id, hold_ttl) -> bool``, which pushes
    an open hold's expiry back to ``hold_ttl`` seconds from now and says whether the hold
    was still there. It is optional (not part of this protocol, so ledgers written without
    it still qualify): when present, a batch renews its hold with it while its items run,
    at most once per ``hold_ttl / 4`` seconds, so that a batch running longer than
    ``hold_ttl`` keeps its hold; without it, such a batch's hold expires in the ledger.
    """

    @property
    def on_ledger_error(self) -> Literal["raise", "local"]:
        """What a guard does on :class:`~spendguard.LedgerError` while deciding: ``"raise"``
        it (the call does not run), or ``"local"``: decide from its own process's ledger
        and log a WARNING."""
        ...

    def admit(
        self,
        account_id: str,
        amount: Decimal,
        *,
        floor: Decimal,
        hold_ttl: float | None,
        ttl: float,
        refresh_interval: float,
        lookup: Callable[[Decimal], Check] | None,
        max_stale: float | None = None,
    ) -> Admission:
        """Admit ``amount`` when ``snapshot - spent since - held - floor >= amount``.

        Expired holds are dropped first. When admitted and ``hold_ttl`` is not ``None``,
        ``amount`` is held until :meth:`end` or for ``hold_ttl`` seconds at most.

        A snapshot older than ``ttl`` seconds, or one that is short and older than
        ``refresh_interval``, is looked up again by one caller across the fleet, which
        calls ``lookup(amount + held + floor)``; the others wait for that answer, or, with
        ``max_stale``, decide from the previous snapshot while it is at most that old.
        Without ``lookup`` nothing is looked up: a snapshot at most ``max_stale`` old is
        used, and if there is none the answer is not admitted with ``available=None``.

        Raises:
            ProviderError: The lookup failed, in this process or in the one that made it.
        """
        ...

    def hold(self, account_id: str, amount: Decimal, *, hold_ttl: float) -> Admission:
        """Hold ``amount`` whatever the balance: a call let through by a failure policy
        or by shadow mode still counts while it runs."""
        ...

    def end(self, account_id: str, hold_id: str | None, charged: Decimal | None) -> None:
        """End hold ``hold_id`` and record ``charged`` as spent (``None``: nothing).

        Ending a hold that is gone (expired, or lost with the ledger's state) or
        ``hold_id=None`` still records ``charged``.
        """
        ...

    def invalidate(self, account_id: str) -> None:
        """Make every process look the balance up before its next decision."""
        ...
