"""The in-process account: one balance snapshot and one set of holds per account.

:class:`Account` is the only writer of what is held and spent. Every amount it counts as
held belongs to a :class:`Ticket` from the moment it is counted: the ticket is made by its
owner before the decision, and the account fills it in inside the same lock section in
which it adds to ``held``. The owner then ends it on every exit path; ending twice is a
no-op. A :class:`~spendguard.Hold` is a ticket with a label and an expiry, listed in
``holds``; a decorated call's ticket is bare and ends through ``ended`` (below).

Amounts are ints of :data:`~spendguard._money.ATOM` (see ``_money``). Lock sections
contain no calls: a thread that cannot be interrupted there cannot be preempted while
holding the lock (which would queue every other thread behind it) and no signal can be
raised between counting an amount and recording its owner.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._check import Check, Source
from ._errors import ConfigurationError, ProviderError, ReentryError
from ._money import atoms_down
from ._policy import Outcome, judge

if TYPE_CHECKING:
    from ._engine import Engine
    from ._hold import Hold

Clock = Callable[[], float]

# Ticket states. QUEUED: a decorated call ended and its ticket waits in ``Account.ended``
# (or was ended from there); only the bulk ending touches it, and its end is final.
PENDING, HELD, ENDED, EXPIRED, QUEUED = 0, 1, 2, 3, 4

BACKLOG = 256
"""A decorated call whose ticket makes the ``ended`` queue a multiple of this long ends the
queue in bulk."""


class Tally:
    """One guard's own totals on its account: its budget, what it holds and spent, and its
    counters. Written by the :class:`Account` (amounts) and the engine (counters) only."""

    __slots__ = (
        "budget",
        "errors",
        "failed",
        "fallbacks",
        "held",
        "hits",
        "lookups",
        "misses",
        "refused",
        "spent",
    )

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.held = 0
        self.spent = 0
        self.hits = 0
        self.misses = 0
        self.refused = 0
        self.failed = 0
        self.lookups = 0
        self.fallbacks = 0
        self.errors: dict[str, int] = {}

    def left(self) -> int | None:
        """What the budget still allows (``None``: no budget). Read under the account's lock."""
        budget = self.budget
        return None if budget is None else budget - self.spent - self.held


class Ticket:
    """Who owns an amount held on an account.

    In atoms: ``reserved`` is what it still holds (blocking others), ``paid`` what it
    recorded as spent. ``phase`` is ``PENDING``, ``HELD``, ``ENDED`` or ``EXPIRED``;
    ``tally`` the guard it counts for; ``fleet`` its hold's name in a shared ledger (if
    any); ``charge`` whether ending it through the ``ended`` queue charges what it holds
    (a call that ran) or releases it (a call that never started, or was answered 402).
    ``cost`` is what ending it in full charges (a :class:`~spendguard.Hold` sets it; a
    decorated call's ticket charges what it holds and leaves it unset). A decorated call
    makes one with ``Ticket.__new__(Ticket)`` and sets ``reserved`` and ``phase``: the
    cheapest object Python makes; the account sets the rest when it holds.
    """

    __slots__ = ("charge", "cost", "engine", "fleet", "paid", "phase", "reserved", "tally")

    listed = False
    """Whether the account lists it in ``holds`` (a :class:`Hold`, which may expire)."""

    reserved: int
    paid: int
    tally: Tally
    fleet: str | None
    charge: bool
    cost: int
    phase: int
    engine: Engine


def new_ticket() -> Ticket:
    """A ticket that holds nothing yet."""
    ticket = Ticket.__new__(Ticket)
    ticket.reserved = 0
    ticket.phase = PENDING
    return ticket


class Account:
    """One account's state in this process, shared by every guard on it.

    ``balance`` is the last looked-up balance, taken at ``balance_at``; ``fetched_at`` is
    the same time while the snapshot may be trusted, ``None`` once invalidated. ``spent``
    is what was spent since that lookup began, ``limit`` is ``balance - spent`` (kept, so
    that a decision subtracts once) and ``held`` what open tickets hold.

    ``holds`` lists the open :class:`Hold` objects, oldest first; ``next_expiry`` is no
    later than the earliest time one of them may expire. ``deferred`` collects endings a
    garbage-collection finalizer could not perform on the spot.

    ``ended`` queues the tickets of decorated calls that ended: appending to a list is
    thread-safe without ``lock`` and cannot be interrupted half-way, which keeps a second
    lock section off every guarded call. What they hold still counts as held until
    :meth:`settle_ended` ends them, and ``balance - spent - held`` is the same either way.
    ``ledger_ends`` collects the ended tickets whose shared-ledger holds the engine has
    still to end.
    """

    __slots__ = (
        "__weakref__",
        "account_id",
        "balance",
        "balance_at",
        "clock",
        "deferred",
        "ended",
        "failure",
        "fetched_at",
        "held",
        "holds",
        "ledger_ends",
        "limit",
        "lock",
        "lookup_thread",
        "lookups",
        "next_expiry",
        "refresh_lock",
        "spent",
    )

    def __init__(self, account_id: str, clock: Clock) -> None:
        self.account_id = account_id
        self.clock = clock
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.balance: int | None = None
        self.limit: int | None = None
        self.fetched_at: float | None = None
        self.balance_at: float | None = None
        self.spent = 0
        self.held = 0
        self.lookups = 0
        self.lookup_thread: int | None = None
        self.failure: tuple[int, ProviderError] | None = None
        self.holds: dict[Hold, None] = {}
        self.next_expiry = math.inf
        self.deferred: list[Callable[[], None]] = []
        self.ended: list[Ticket] = []
        self.ledger_ends: list[Ticket] = []

    # -- deciding from the snapshot --------------------------------------------------------

    def take_cached(  # noqa: PLR0917 - positional on purpose: the hot path
        self, ticket: Ticket | None, amount: int, floor: int, ttl: float, now: float, tally: Tally
    ) -> int | None:
        """Hold ``amount`` for ``ticket`` (``None``: only look) when a snapshot younger than
        ``ttl`` covers it within the floor and the budget; what was available, or ``None``.

        The guard's hot path: the same rule as :func:`spendguard._policy.judge`, written
        out here once because a call inside the lock section would cost more than the
        whole section (see the module docstring).
        """
        with self.lock:
            fetched_at = self.fetched_at
            if fetched_at is None or now - fetched_at > ttl:
                return None
            available = self.limit - self.held - floor  # type: ignore[operator]
            if available < amount:
                return None
            budget = tally.budget
            if budget is not None and budget - tally.spent - tally.held < amount:
                return None
            tally.hits += 1
            if ticket is not None:  # _take_locked, written out
                self.held += amount
                tally.held += amount
                ticket.tally = tally
                ticket.paid = 0
                ticket.fleet = None
                ticket.charge = False
                ticket.phase = HELD
                ticket.reserved = amount
                if ticket.listed:
                    self.holds[ticket] = None  # type: ignore[index]
                    expires_at: float = ticket.expires_at  # type: ignore[attr-defined]
                    if expires_at < self.next_expiry:  # noqa: PLR1730 - no call under lock
                        self.next_expiry = expires_at
            return available

    def read(
        self, floor: int, ttl: float, now: float, tally: Tally
    ) -> tuple[int | None, int | None, float | None, int]:
        """A consistent reading: (available, or ``None`` when the snapshot is older than
        ``ttl``; the budget left or ``None``; the snapshot's age or ``None``; lookups done)."""
        with self.lock:
            fetched_at = self.fetched_at
            limit = self.limit
            fresh = limit is not None and fetched_at is not None and now - fetched_at <= ttl
            available = limit - self.held - floor if fresh else None  # type: ignore[operator]
            balance_at = self.balance_at
            age = None if balance_at is None else max(now - balance_at, 0.0)
            return available, tally.left(), age, self.lookups

    def attempt(
        self,
        ticket: Ticket | None,
        amount: int,
        tally: Tally,
        *,
        floor: int | None,
        ttl: float | None,
        now: float,
        source: Source = "cache",
        remote: bool | None = None,
    ) -> tuple[Outcome | None, int, float]:
        """Judge ``amount`` (see :func:`spendguard._policy.judge`) and, when admitted and a
        ``ticket`` is given, hold it for the ticket, in one lock section.

        ``floor=None`` leaves the balance out (only the budget is judged: a fallback that
        lets the call through, or a shared ledger that judges the balance itself).
        ``ttl=None`` takes the snapshot whatever its age; otherwise a snapshot older than
        ``ttl`` gives no outcome (``None``) unless the budget alone refuses.

        Returns:
            (the outcome or ``None``, lookups done so far, seconds since the snapshot was
            looked up or ``inf``).
        """
        with self.lock:
            fetched_at = self.fetched_at
            fresh_for = math.inf if fetched_at is None else now - fetched_at
            balance_at = self.balance_at
            age = None if balance_at is None else max(now - balance_at, 0.0)
            if ttl is not None and not fresh_for <= ttl:
                left = tally.left()
                if left is not None and left < amount:
                    return (
                        judge(amount, None, left, source=source, age=None),
                        self.lookups,
                        fresh_for,
                    )
                return None, self.lookups, fresh_for
            limit = self.limit
            available = None if floor is None or limit is None else limit - self.held - floor
            outcome = judge(amount, available, tally.left(), source=source, age=age, remote=remote)
            if outcome.admitted and ticket is not None:
                self._take_locked(ticket, amount, tally)
            return outcome, self.lookups, fresh_for

    def attach(self, ticket: Ticket, hold_id: str | None) -> bool:
        """Record ``ticket``'s hold in a shared ledger; ``False`` when it already ended."""
        with self.lock:
            if ticket.phase != HELD:
                return False
            ticket.fleet = hold_id
            return True

    def hold_anyway(self, ticket: Ticket, amount: int, tally: Tally) -> None:
        """Hold ``amount`` whatever the balance and budget (shadow mode lets a refused call run)."""
        with self.lock:
            self._take_locked(ticket, amount, tally)

    def _take_locked(self, ticket: Ticket, amount: int, tally: Tally) -> None:
        """Count ``amount`` as held by ``ticket``; a :class:`Hold` is listed with it.

        :meth:`take_cached` writes the same lines out, for speed."""
        if ticket.phase != PENDING:
            return
        self.held += amount
        tally.held += amount
        ticket.tally = tally
        ticket.paid = 0
        ticket.fleet = None
        ticket.charge = False
        ticket.phase = HELD
        ticket.reserved = amount
        if ticket.listed:
            self.holds[ticket] = None  # type: ignore[index]
            expires_at: float = ticket.expires_at  # type: ignore[attr-defined]
            self.next_expiry = min(self.next_expiry, expires_at)

    # -- ending ------------------------------------------------------------------------

    def end(self, ticket: Ticket, charged: int | None) -> bool:
        """End ``ticket`` once: what it holds is released and ``charged`` (its whole cost;
        ``None`` charges nothing more) is recorded as spent. Whether this call ended it."""
        with self.lock:
            state = ticket.phase
            if state == HELD:
                held = ticket.reserved
                ticket.reserved = 0
                self.held -= held
                ticket.tally.held -= held
                if ticket in self.holds:
                    del self.holds[ticket]
            elif state != EXPIRED:
                return False
            ticket.phase = ENDED
            if charged is not None and charged != ticket.paid:
                more = charged - ticket.paid
                ticket.paid = charged
                self.spent += more
                if self.limit is not None:
                    self.limit -= more
                ticket.tally.spent += more
            return True

    def unreserve(self, ticket: Ticket) -> None:
        """Give back what ``ticket`` holds and make it pending again (its decision is
        taken anew: a shared ledger refused or failed after the budget was reserved)."""
        with self.lock:
            if ticket.phase == HELD:
                held = ticket.reserved
                ticket.reserved = 0
                self.held -= held
                ticket.tally.held -= held
                ticket.phase = PENDING

    def consume(self, ticket: Ticket, part: int) -> bool:
        """Move ``part`` of what ``ticket`` holds to spent (a batch's item is done)."""
        with self.lock:
            state = ticket.phase
            if state == HELD:
                part = min(part, ticket.reserved)
                ticket.reserved -= part
                self.held -= part
                ticket.tally.held -= part
            elif state != EXPIRED:
                return False
            ticket.paid += part
            self.spent += part
            if self.limit is not None:
                self.limit -= part
            ticket.tally.spent += part
            return True

    def settle_ended(self) -> None:
        """End the tickets in ``ended``: each charges what it holds, or releases it; those
        with a shared-ledger hold go to ``ledger_ends``.

        The queue is summed outside ``lock``, in runs of one guard's tickets; each run is
        then committed in one lock section with no call and no loop, which drops the run
        from the head of the queue as it moves its sum from held to spent. So no thread is
        ever preempted while holding ``lock``, which would queue every deciding thread
        behind it (8 threads once ran at a fifth of one thread's speed), and an interrupt
        either commits a run whole or leaves it queued. Threads ending the queue at once
        need no lock of their own: a run whose head has left the queue was committed by
        another, and is summed again from the new head.
        """
        ended = self.ended
        for _ in range(len(ended)):  # at most one run per ticket
            try:
                head = ended[0]
            except IndexError:
                return
            tally = head.tally
            count = held = charged = 0
            ledger: list[Ticket] = []
            for ticket in ended:
                if ticket.tally is not tally:
                    break
                count += 1
                reserved = ticket.reserved
                held += reserved
                if ticket.charge:
                    charged += reserved
                if ticket.fleet is not None:
                    ticket.paid = reserved if ticket.charge else 0
                    ledger.append(ticket)
            with self.lock:
                if ended and ended[0] is head:
                    if self.limit is not None:
                        self.limit -= charged
                    self.spent += charged
                    tally.spent += charged
                    self.held -= held
                    tally.held -= held
                    del ended[:count]
                    self.ledger_ends += ledger  # an operator, not a call: no interrupt

    def next_ledger_end(self) -> Ticket | None:
        """Take one ticket from ``ledger_ends`` for its shared-ledger hold to be ended
        (``None``: none left); several threads may take them at once."""
        try:
            return self.ledger_ends.pop()
        except IndexError:
            return None

    # -- open holds and expiry -----------------------------------------------------------

    def defer(self, ending: Callable[[], None]) -> None:
        """Have the next decision call ``ending``; never blocks, never takes ``lock``.

        For finalizers run by the garbage collector, which may run in a thread that
        already holds ``lock``.
        """
        self.deferred.append(ending)
        self.next_expiry = -math.inf

    def run_deferred(self) -> None:
        """Run the endings :meth:`defer` (or an interrupted block) left to the next decision;
        several threads may run them at once, each ending once."""
        while True:
            try:
                ending = self.deferred.pop()
            except IndexError:
                break
            ending()

    def expire(self, now: float) -> list[Hold]:
        """Run deferred endings, then expire the holds due by ``now``: they stop blocking
        others, and their owner may still end them. Returns the holds that expired."""
        self.run_deferred()
        expired: list[Hold] = []
        with self.lock:
            if now < self.next_expiry:
                return expired
            next_expiry = math.inf
            for hold in list(self.holds):
                if hold.phase != HELD:
                    del self.holds[hold]
                elif hold.expires_at <= now:
                    held = hold.reserved
                    hold.reserved = 0
                    hold.phase = EXPIRED
                    self.held -= held
                    hold.tally.held -= held
                    del self.holds[hold]
                    expired.append(hold)
                else:  # an ``elif`` here: CPython 3.12 and 3.13 leave its jump unguarded
                    expires_at = hold.expires_at
                    next_expiry = expires_at if expires_at < next_expiry else next_expiry
            self.next_expiry = next_expiry
            # A finalizer may have deferred an ending since the queue was emptied; its
            # minus infinity must not be overwritten.
            if self.deferred:
                self.next_expiry = -math.inf
        return expired

    def renew(self, ticket: Hold, expires_at: float) -> None:
        """Push ``ticket``'s expiry back to ``expires_at`` (its owner is at work)."""
        with self.lock:
            if ticket.phase == HELD:
                ticket.expires_at = expires_at

    # -- the snapshot -------------------------------------------------------------------

    def refresh(self, check: Callable[[int], Check], beyond: int, seen: int) -> Check | None:
        """Ask ``check(beyond + held)`` unless another thread finished a lookup since
        ``seen`` was read.

        Returns the lookup's answer, or ``None`` when another thread's fresh snapshot is to
        be used instead. Re-raises the error of a lookup that failed while this thread
        waited, so that a failing provider sees one request per burst, not one per
        caller. Spending that ends while the lookup is in flight stays counted.

        Raises:
            ProviderError: The lookup failed.
            ReentryError: The lookup itself (a provider, or a log handler it triggered)
                asked this account for a decision.
        """
        me = threading.get_ident()
        if self.lookup_thread == me:
            raise ReentryError(
                "the balance lookup called back into the guard (a provider or a log handler "
                "on 'spendguard' deciding during a lookup); decide outside the lookup instead"
            )
        with self.refresh_lock:
            self.settle_ended()
            with self.lock:
                if self.lookups != seen:
                    failure = self.failure
                    if failure is not None and failure[0] == self.lookups:
                        raise copy.copy(failure[1]) from failure[1]
                    if self.fetched_at is not None:
                        return None
                started = self.clock()
                spent_before = self.spent
                asked = beyond + self.held
                self.lookup_thread = me
            try:
                result = check(asked)
                balance = atoms_down(result.available)
            except ProviderError as exc:
                with self.lock:
                    self.lookup_thread = None
                    self.lookups += 1
                    self.failure = (self.lookups, exc)
                raise
            except BaseException:
                with self.lock:
                    self.lookup_thread = None
                raise
            with self.lock:
                self.lookup_thread = None
                self.balance = balance
                self.fetched_at = self.balance_at = started
                self.spent -= spent_before
                self.limit = balance - self.spent
                self.lookups += 1
                self.failure = None
            return result

    def invalidate(self) -> None:
        """Forget the snapshot's freshness; the next decision looks the balance up."""
        with self.lock:
            self.fetched_at = None

    def totals(self) -> tuple[int | None, int, int]:
        """(balance minus spending since or ``None``, spent since, held), settled first."""
        self.settle_ended()
        with self.lock:
            return self.limit, self.spent, self.held


class Accounts:
    """Hands out one :class:`Account` per account for as long as a guard uses it.

    Guards on one account share its snapshot and holds, so they must share one clock:
    a second clock for a live account is a :class:`~spendguard.ConfigurationError`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: weakref.WeakValueDictionary[str, Account] = weakref.WeakValueDictionary()

    def account(self, account_id: str, clock: Clock) -> Account:
        """The shared account for ``account_id``.

        Raises:
            ConfigurationError: The account is in use with another clock.
        """
        with self._lock:
            account = self._accounts.get(account_id)
            if account is None:
                account = self._accounts[account_id] = Account(account_id, clock)
            elif account.clock is not clock and account.clock != clock:
                raise ConfigurationError(
                    "another guard watches this account through a different clock; guards "
                    "on one account share its holds, so they must share one clock"
                )
            return account

    def reset(self) -> None:
        """Forget every account's snapshot: guards made afterwards start from an empty
        one, and guards already made look the balance up again (they keep their holds)."""
        with self._lock:
            accounts = list(self._accounts.values())
            self._accounts.clear()
        for account in accounts:
            account.invalidate()


ACCOUNTS = Accounts()
