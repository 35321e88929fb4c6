"""The engine: decide, hold and end for one guard, over its account or a shared ledger.

Every face (the decorator, ``spend``, batches, ``map``, the guarded Session) holds through
:meth:`Engine.admit` and ends through :meth:`Engine.end` or :meth:`Engine.finish`. A hold is
born owned: the caller makes the :class:`~spendguard._account.Ticket` first, and the
account fills it in inside the lock section that counts it (see ``_account``). What the
engine calls out to afterwards (listeners, logging) may raise anything: the ticket's owner
still ends it.

The rules themselves (budget, floor, failure policy, shadow mode) are in ``_policy``; the
shared-ledger client (``_fleet``) returns data and never calls back here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from decimal import Decimal
from typing import TYPE_CHECKING

from . import _policy
from ._account import EXPIRED, Account, Tally, Ticket
from ._check import Check
from ._decision import Decision, Listener, Stats, notify
from ._errors import InsufficientCredits, LedgerError, ProviderError
from ._money import ATOM, CONTEXT, Amount, atoms_up, format_amount, from_atoms, tidy, to_amount
from ._policy import OnUnavailable, Outcome, ends_with_402

if TYPE_CHECKING:
    from ._fleet import Fleet
    from ._hold import Hold
    from ._provider import Provider

log = logging.getLogger("spendguard")

_ZERO = Decimal(0)
_DEBUG = logging.DEBUG
_LOCAL_FOR = 1.0
"""Seconds a guard decides locally after a ledger error (``"local"``) before trying again."""
_LIVE = math.inf
"""The expiry asked of a shared ledger's holds: none while this process lives (the ledger
renews them, and the engine ends them itself, at its own ``hold_ttl`` if their owner
vanished); a ledger expires them only once the process is gone."""
_LOCAL = ""
"""A ticket's ``fleet`` when this process admitted it alone: its cost still reaches the ledger."""


class Engine:
    """Deciding, holding and ending for one guard.

    ``floor`` and the budget (in ``tally``) are atoms. The guard's public options are read
    from here, so that a guard and its engine can never disagree.
    """

    def __init__(
        self,
        provider: Provider,
        account: Account,
        tally: Tally,
        *,
        name: str,
        ttl: float,
        floor: int,
        refresh_interval: float,
        max_stale: float,
        on_unavailable: OnUnavailable,
        enforce: bool,
        listeners: tuple[Listener, ...],
        hold_ttl: float | None,
        fleet: Fleet | None,
    ) -> None:
        self.provider = provider
        self.unit = provider.unit
        self.provider_name = provider.name
        self.account = account
        self.tally = tally
        self.name = name
        self.ttl = ttl
        self.floor = floor
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.on_unavailable: OnUnavailable = on_unavailable
        self.enforce = enforce
        self.listeners = listeners
        self.hold_ttl = math.inf if hold_ttl is None else hold_ttl
        self.fleet = fleet
        self.clock = account.clock
        self._local_until = -math.inf
        # Only a guard with neither listeners nor a shared ledger may take the fast path.
        self.plain = fleet is None and not listeners
        # One converted figure remembered: check() on an unchanged balance converts none.
        self._shown: tuple[int, Decimal] = (0, _ZERO)

    # -- holding ------------------------------------------------------------------------

    def admit(self, ticket: Ticket, amount: int) -> Outcome:
        """Hold ``amount`` for ``ticket`` through a full decision, or raise why not.

        Raises:
            InsufficientCredits: Refused (the ticket holds nothing).
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
            LedgerError: The shared ledger failed and its policy is ``"raise"``.
        """
        outcome = self.decide(amount, ticket)
        if not outcome.admitted:
            raise self.refusal(amount, outcome)
        return outcome

    async def aadmit(self, ticket: Ticket, amount: int) -> Outcome:
        """:meth:`admit` for coroutines: a lookup runs in a worker thread."""
        outcome = await self.adecide(amount, ticket)
        if not outcome.admitted:
            raise self.refusal(amount, outcome)
        return outcome

    def end(self, ticket: Ticket, charged: int | None) -> None:
        """End ``ticket`` once, charging ``charged`` in all (``None``: nothing more)."""
        if self.account.end(ticket, charged) and ticket.fleet is not None:
            self._end_fleet(ticket)

    def end_block(self, ticket: Ticket, atoms: int, exc: BaseException | None) -> None:
        """A ``spend`` block ended: released when ``exc`` carries a 402 (the provider did
        not charge, and the cached balance is dropped), else settled in full."""
        if exc is not None and ends_with_402(exc):
            self.end(ticket, None)
            self.payment_required()
        elif self.account.end(ticket, atoms) and ticket.fleet is not None:
            self._end_fleet(ticket)

    def payment_required(self) -> None:
        """The provider answered 402: drop the cached balance, here and in the fleet."""
        log.warning("%s: the provider answered 402; the cached balance is dropped", self.name)
        self.invalidate()

    def invalidate(self) -> None:
        """Drop the cached balance (for every guard on the account, and the fleet's)."""
        if self.fleet is not None:
            self.fleet.invalidate()
        self.account.invalidate()

    def settle(self) -> None:
        """End every queued ticket of decorated calls, and every ending left to the next
        decision, now (the queue is long, a shared ledger waits for its holds' ends, or what
        was spent or held is about to be read)."""
        account = self.account
        if account.deferred:
            account.run_deferred()
        account.settle_ended()
        while (ticket := account.next_ledger_end()) is not None:
            self._end_fleet(ticket)

    def consume(self, ticket: Ticket, part: int) -> None:
        """Count ``part`` of ``ticket`` as spent (a batch's item is done)."""
        self.account.consume(ticket, part)

    def _end_fleet(self, ticket: Ticket) -> None:
        """Tell the ledger what ``ticket`` cost (``fleet == _LOCAL``: it was admitted by this
        process alone while the ledger failed, and holds nothing there)."""
        assert self.fleet is not None
        charged = ticket.paid
        self.fleet.end(ticket.fleet or None, from_atoms(charged) if charged else None)

    # -- deciding -------------------------------------------------------------------------

    def decide(self, amount: int, ticket: Ticket | None, blocking: bool = True) -> Outcome:
        """Decide about ``amount`` (holding it for ``ticket`` when one is given)."""
        now = self.clock()
        if now >= self.account.next_expiry:
            self.expire(now)
        if self.fleet is not None and now >= self._local_until:
            try:
                outcome = self._from_fleet(amount, ticket)
            except LedgerError as exc:
                self._on_ledger_error(exc)
            else:
                return self._conclude(amount, ticket, blocking, outcome)
        cached, seen = self._from_snapshot(amount, ticket, now)
        if cached is not None:
            return self._conclude(amount, ticket, blocking, self._local(ticket, cached))
        try:
            check = self.account.refresh(self._check, amount + self.floor, seen)
        except ProviderError as exc:
            outcome = self._on_error(amount, ticket, exc)
        else:
            outcome = self._after_lookup(amount, ticket, check)
        return self._conclude(amount, ticket, blocking, self._local(ticket, outcome))

    def _local(self, ticket: Ticket | None, outcome: Outcome) -> Outcome:
        """A guard with a shared ledger decided in this process alone: what the ticket
        spends is still recorded in the ledger when it ends."""
        if self.fleet is not None and ticket is not None and outcome.admitted:
            self.account.attach(ticket, _LOCAL)
        return outcome

    async def adecide(self, amount: int, ticket: Ticket | None, blocking: bool = True) -> Outcome:
        """:meth:`decide` for coroutines: whatever may block runs in a worker thread; what is
        held is taken on the event loop, so a cancelled task holds nothing."""
        now = self.clock()
        if now >= self.account.next_expiry:
            self.expire(now)
        if self.fleet is not None and now >= self._local_until:
            try:
                outcome = await self._afrom_fleet(amount, ticket)
            except LedgerError as exc:
                self._on_ledger_error(exc)
            else:
                return self._conclude(amount, ticket, blocking, outcome)
        cached, seen = self._from_snapshot(amount, ticket, now)
        if cached is not None:
            return self._conclude(amount, ticket, blocking, self._local(ticket, cached))
        try:
            check = await asyncio.to_thread(
                self.account.refresh, self._check, amount + self.floor, seen
            )
        except ProviderError as exc:
            outcome = self._on_error(amount, ticket, exc)
        else:
            outcome = self._after_lookup(amount, ticket, check)
        return self._conclude(amount, ticket, blocking, self._local(ticket, outcome))

    def _check(self, atoms: int) -> Check:
        return self.provider.check(from_atoms(atoms))

    def _from_snapshot(
        self, amount: int, ticket: Ticket | None, now: float
    ) -> tuple[Outcome | None, int]:
        """Decide from a fresh snapshot, or ``None`` when a lookup must come first; and the
        number of lookups done when the snapshot was read (for single-flight)."""
        account, tally = self.account, self.tally
        outcome, seen, fresh_for = account.attempt(
            ticket, amount, tally, floor=self.floor, ttl=self.ttl, now=now
        )
        if outcome is not None and (
            outcome.admitted or outcome.note == "budget" or fresh_for < self.refresh_interval
        ):
            with account.lock:
                tally.hits += 1
            return outcome, seen
        with account.lock:
            tally.misses += 1
        return None, seen

    def _after_lookup(self, amount: int, ticket: Ticket | None, check: Check | None) -> Outcome:
        account, tally = self.account, self.tally
        remote = None if check is None else check.sufficient
        outcome, _, _ = account.attempt(
            ticket,
            amount,
            tally,
            floor=self.floor,
            ttl=None,
            now=self.clock(),
            source="remote",
            remote=remote,
        )
        assert outcome is not None
        if check is not None:
            with account.lock:
                tally.lookups += 1
            if log.isEnabledFor(_DEBUG):
                log.debug("%s: looked up %s", self.name, check)
        return outcome

    def _on_error(self, amount: int, ticket: Ticket | None, exc: ProviderError) -> Outcome:
        """Apply the failure policy to a lookup that failed."""
        account, tally = self.account, self.tally
        now = self.clock()
        _, _, age, _ = account.read(self.floor, self.ttl, now, tally)
        kind = type(exc).__name__
        with account.lock:
            tally.lookups += 1
            tally.errors[kind] = tally.errors.get(kind, 0) + 1
        action = _policy.on_failure(
            exc, self.on_unavailable, enforce=self.enforce, age=age, max_stale=self.max_stale
        )
        if action == "raise":
            with account.lock:
                tally.failed += 1
            raise exc
        floor: int | None = self.floor if action == "stale" else None
        outcome, _, _ = account.attempt(
            ticket, amount, tally, floor=floor, ttl=None, now=now, source="fallback"
        )
        assert outcome is not None
        return self._fallback(amount, outcome, exc, action, age)

    def _fallback(
        self, amount: int, outcome: Outcome, exc: ProviderError, action: str, age: float | None
    ) -> Outcome:
        with self.account.lock:
            self.tally.fallbacks += 1
        if outcome.note == "budget":
            return outcome
        outcome = _policy.fallback(outcome, exc)
        if action == "stale":
            log.warning(
                "%s: balance unavailable (%s); deciding from the balance of %.1fs ago "
                "(on_unavailable='stale')",
                self.name,
                exc.message,
                age,
            )
        else:
            log.warning(
                "%s: balance unavailable (%s); letting %s through (%s)",
                self.name,
                exc.message,
                format_amount(from_atoms(amount), self.unit),
                "on_unavailable='allow'"
                if self.on_unavailable == "allow" and self.enforce
                else "enforce=False",
            )
        return outcome

    # -- the shared ledger --------------------------------------------------------------

    def _from_fleet(self, amount: int, ticket: Ticket | None) -> Outcome:
        """Decide against the shared ledger: the budget is reserved here first (so that a
        fallback holds it too), then the ledger admits for the fleet."""
        assert self.fleet is not None
        account, tally = self.account, self.tally
        reserved = ticket is not None
        if ticket is not None:
            outcome, _, _ = account.attempt(
                ticket, amount, tally, floor=None, ttl=None, now=self.clock(), source="cache"
            )
            assert outcome is not None
            if not outcome.admitted:
                return outcome
        else:
            with account.lock:
                left = tally.left()
            if left is not None and left < amount:
                return _policy.judge(amount, None, left, source="cache", age=None)
        try:
            outcome, hold_id = self._fleet_answer(amount, ticket)
        except BaseException:
            if reserved:
                assert ticket is not None
                account.unreserve(ticket)
            raise
        if ticket is not None:
            if not outcome.admitted:
                account.unreserve(ticket)
            elif not account.attach(ticket, hold_id) and hold_id is not None:
                self.fleet.end(hold_id, None)
        return outcome

    def _fleet_answer(self, amount: int, ticket: Ticket | None) -> tuple[Outcome, str | None]:
        """The ledger's answer, with the failure policy applied to a lookup error."""
        assert self.fleet is not None
        fleet, tally = self.fleet, self.tally
        with self.account.lock:
            left = tally.left()
        hold = ticket is not None
        try:
            answer = fleet.admit(
                amount,
                hold=hold,
                floor=self.floor,
                hold_ttl=_LIVE,
                ttl=self.ttl,
                refresh_interval=self.refresh_interval,
                lookup=self.provider.check,
                max_stale=self.max_stale if self.on_unavailable == "stale" else None,
            )
        except ProviderError as exc:
            return self._fleet_error(amount, hold, left, exc)
        with self.account.lock:
            if answer.check is not None:
                tally.lookups += 1
            if answer.source == "cache":
                tally.hits += 1
            else:
                tally.misses += 1
        outcome = _policy.judge(
            amount,
            answer.available,
            left,
            source=answer.source,
            age=answer.age,
            remote=answer.admitted,
        )
        if not outcome.admitted and answer.hold_id is not None:
            fleet.end(answer.hold_id, None)
            return outcome, None
        return outcome, answer.hold_id

    def _fleet_error(
        self, amount: int, hold: bool, left: int | None, exc: ProviderError
    ) -> tuple[Outcome, str | None]:
        assert self.fleet is not None
        fleet, tally = self.fleet, self.tally
        kind = type(exc).__name__
        with self.account.lock:
            tally.misses += 1
            tally.lookups += 1
            tally.errors[kind] = tally.errors.get(kind, 0) + 1
        if (
            self.on_unavailable == "stale"
            and _policy.on_failure(exc, "stale", enforce=True, age=0.0, max_stale=self.max_stale)
            == "stale"
        ):
            answer = fleet.admit(
                amount,
                hold=hold,
                floor=self.floor,
                hold_ttl=_LIVE,
                ttl=self.ttl,
                refresh_interval=self.refresh_interval,
                lookup=None,
                max_stale=self.max_stale,
            )
            if answer.available is not None:
                outcome = _policy.judge(
                    amount,
                    answer.available,
                    left,
                    source="fallback",
                    age=answer.age,
                    remote=answer.admitted,
                )
                hold_id = answer.hold_id
                if hold_id is not None and not outcome.admitted:
                    fleet.end(hold_id, None)
                    hold_id = None
                return self._fallback(amount, outcome, exc, "stale", answer.age), hold_id
        action = _policy.on_failure(
            exc, self.on_unavailable, enforce=self.enforce, age=None, max_stale=self.max_stale
        )
        if action != "allow":
            with self.account.lock:
                tally.failed += 1
            raise exc
        held = fleet.hold(amount, hold_ttl=_LIVE) if hold else None
        available = None if held is None or held.available is None else held.available
        age = None if held is None else held.age
        outcome = _policy.judge(amount, None, left, source="fallback", age=age)
        outcome = outcome._replace(available=_policy.within(available, left))
        return self._fallback(amount, outcome, exc, "allow", age), (
            None if held is None else held.hold_id
        )

    async def _afrom_fleet(self, amount: int, ticket: Ticket | None) -> Outcome:
        """:meth:`_from_fleet` in a worker thread; a task cancelled meanwhile takes nothing:
        what the thread held is ended, by the thread itself or here, whichever is last."""
        assert self.fleet is not None

        def undo(_: Outcome) -> None:
            if ticket is not None:
                self.end(ticket, None)

        handoff = self.fleet.handoff(undo)
        try:
            return await asyncio.to_thread(handoff.run, self._from_fleet, amount, ticket)
        except asyncio.CancelledError:
            handoff.abandon()
            raise

    def _on_ledger_error(self, exc: LedgerError) -> None:
        """``"raise"`` re-raises; ``"local"`` decides in this process for a while."""
        assert self.fleet is not None
        if self.fleet.on_ledger_error != "local":
            raise exc
        self._local_until = self.clock() + _LOCAL_FOR
        log.warning(
            "%s: ledger unavailable (%s); deciding from this process's own ledger for %g s "
            "(on_ledger_error='local')",
            self.name,
            exc,
            _LOCAL_FOR,
        )

    # -- concluding -----------------------------------------------------------------------

    def _conclude(
        self, amount: int, ticket: Ticket | None, blocking: bool, outcome: Outcome
    ) -> Outcome:
        """Count and report a decision; in shadow mode turn a refusal into a pass (held)."""
        if not outcome.admitted:
            with self.account.lock:
                self.tally.refused += 1
            if blocking and not self.enforce:
                if ticket is not None:
                    self.account.hold_anyway(ticket, amount, self.tally)
                    self._hold_in_fleet(ticket, amount)
                outcome = _policy.shadow(outcome)
                log.warning(
                    "%s: would refuse %s (short by %s) but enforce=False; letting it through",
                    self.name,
                    format_amount(from_atoms(amount), self.unit),
                    self._shortfall_text(amount, outcome),
                )
            else:
                log.info(
                    "%s: refused %s, %s available, short by %s [%s]",
                    self.name,
                    format_amount(from_atoms(amount), self.unit),
                    format_amount(self.shown(outcome.available or 0), self.unit, bare=True),
                    self._shortfall_text(amount, outcome),
                    outcome.note or outcome.source,
                )
        elif log.isEnabledFor(_DEBUG):
            log.debug(
                "%s: admitted %s from %s (%s available)",
                self.name,
                format_amount(from_atoms(amount), self.unit),
                outcome.source,
                "unknown"
                if outcome.available is None
                else format_amount(self.shown(outcome.available), self.unit, bare=True),
            )
        if self.listeners:
            notify(self.listeners, self.decision(amount, outcome))
        return outcome

    def _hold_in_fleet(self, ticket: Ticket, amount: int) -> None:
        """Hold in the shared ledger too what shadow mode lets through, so that other
        processes count it; a ledger failure here is logged, the call still runs."""
        fleet = self.fleet
        if fleet is None:
            return
        if self.clock() < self._local_until:
            self.account.attach(ticket, _LOCAL)
            return
        try:
            held = fleet.hold(amount, hold_ttl=_LIVE)
        except LedgerError as exc:
            log.warning("%s: could not hold a shadow-mode call in the ledger: %s", self.name, exc)
            self.account.attach(ticket, _LOCAL)
            return
        if not self.account.attach(ticket, held.hold_id) and held.hold_id is not None:
            fleet.end(held.hold_id, None)

    def _shortfall_text(self, amount: int, outcome: Outcome) -> str:
        available = outcome.available or 0
        return format_amount(from_atoms(max(amount - available, 0)), self.unit, bare=True)

    def shown(self, atoms: int) -> Decimal:
        """``atoms`` as a ``Decimal``; the last figure converted is remembered."""
        shown = self._shown
        if shown[0] == atoms:
            return shown[1]
        value = from_atoms(atoms)
        self._shown = (atoms, value)
        return value

    def decision(self, amount: int, outcome: Outcome) -> Decision:
        """The record listeners receive."""
        available = 0 if outcome.available is None else outcome.available
        shortfall = max(amount - available, 0) if outcome.sufficient is False else 0
        return Decision(
            allowed=outcome.admitted,
            sufficient=outcome.sufficient,
            required=from_atoms(amount),
            available=from_atoms(available),
            shortfall=from_atoms(shortfall),
            source=outcome.source,
            age=outcome.age,
            provider=self.provider_name,
            guard=self.name,
            unit=self.unit,
            enforced=outcome.note != "shadow",
            error=outcome.note if outcome.source == "fallback" else None,
        )

    def to_check(self, required: Decimal, amount: int, outcome: Outcome) -> Check:
        """A :class:`Check` of an outcome."""
        available = _ZERO if outcome.available is None else self.shown(outcome.available)
        if outcome.sufficient is False:
            shortfall = amount - (outcome.available or 0)
            short = from_atoms(shortfall) if shortfall > 0 else _ZERO
            return Check(False, required, available, short, self.unit, outcome.source, outcome.age)
        return Check(True, required, available, _ZERO, self.unit, outcome.source, outcome.age)

    def refusal(
        self, amount: int, outcome: Outcome, *, affordable: int | None = None
    ) -> InsufficientCredits:
        """The error for a refused ``amount``."""
        note = outcome.note
        reason = None
        budget = self.tally.budget
        if note == "budget" and budget is not None:
            reason = f"budget of {format_amount(from_atoms(budget), self.unit)} for this guard"
        elif note == "remote":
            reason = "the provider reported the balance insufficient"
        elif (
            self.floor
            and outcome.available is not None
            and outcome.available + self.floor >= amount
        ):
            reason = f"keeping the floor of {format_amount(from_atoms(self.floor), self.unit)}"
        available = 0 if outcome.available is None else outcome.available
        return InsufficientCredits(
            required=from_atoms(amount),
            available=from_atoms(available),
            unit=self.unit,
            provider=self.provider_name,
            reason=reason,
            affordable=affordable,
        )

    # -- reading ------------------------------------------------------------------------

    def stats(self) -> Stats:
        """A snapshot of the guard's counters."""
        tally = self.tally
        with self.account.lock:
            decisions = tally.hits + tally.misses
            return Stats(
                decisions=decisions,
                admitted=decisions - tally.refused - tally.failed,
                refused=tally.refused,
                cache_hits=tally.hits,
                lookups=tally.lookups,
                fallbacks=tally.fallbacks,
                errors=dict(tally.errors),
            )

    def expire(self, now: float) -> None:
        """Expire the holds whose owners did not end them in time; a WARNING names each.

        What an expired hold's call spends is not known until its owner ends it, so the
        cached balance is dropped: the next decision asks the provider, whose balance
        shows whatever was charged meanwhile.
        """
        expired = self.account.expire(now)
        if expired:
            self.invalidate()
        for hold in expired:
            if hold.fleet is not None and self.fleet is not None:
                self.fleet.end(hold.fleet or None, None)
            label = "" if hold.label is None else f" {hold.label!r}"
            log.warning(
                "%s: hold%s of %s expired after %.1fs without being settled or released; "
                "it no longer blocks other calls (hold_ttl=%s)",
                self.name,
                label,
                format_amount(hold.amount, self.unit),
                max(now - hold.created_at, 0.0),
                None if self.hold_ttl == math.inf else self.hold_ttl,
            )

    def ensure_fresh(self) -> None:
        """Look the balance up when the snapshot is older than ``ttl``."""
        now = self.clock()
        if now >= self.account.next_expiry:
            self.expire(now)
        available, _, _, seen = self.account.read(self.floor, self.ttl, now, self.tally)
        if available is not None:
            return
        check = self.account.refresh(self._check, self.floor, seen)
        if check is not None:
            with self.account.lock:
                self.tally.lookups += 1
            if log.isEnabledFor(_DEBUG):
                log.debug("%s: looked up %s", self.name, check)

    def read_balance(self) -> Decimal:
        """The snapshot minus spending since, looked up when stale (no holds, no floor);
        with a shared ledger, the fleet's."""
        if self.fleet is not None and self.clock() >= self._local_until:
            try:
                available, held = self.fleet.read(
                    floor=0,
                    ttl=self.ttl,
                    refresh_interval=self.refresh_interval,
                    lookup=self.provider.check,
                )
            except LedgerError as exc:
                self._on_ledger_error(exc)
            else:
                if available is not None:
                    return from_atoms(available + held)
        self.ensure_fresh()
        self.settle()
        limit, spent, _ = self.account.totals()
        return from_atoms(limit if limit is not None else -spent)

    def read_available(self) -> Decimal:
        """What the guard could spend now (balance minus holds and floor, within the
        budget), looked up when stale; with a shared ledger, fleet-wide."""
        if self.fleet is not None and self.clock() >= self._local_until:
            try:
                available, _ = self.fleet.read(
                    floor=self.floor,
                    ttl=self.ttl,
                    refresh_interval=self.refresh_interval,
                    lookup=self.provider.check,
                )
            except LedgerError as exc:
                self._on_ledger_error(exc)
            else:
                with self.account.lock:
                    left = self.tally.left()
                return from_atoms(_policy.within(available, left) or 0)
        self.ensure_fresh()
        return from_atoms(self.available_now())

    def available_now(self) -> int:
        """Balance minus holds and floor within the budget, from the snapshot as it is."""
        self.settle()
        account = self.account
        with account.lock:
            limit = account.limit
            base = limit if limit is not None else -account.spent
            available = base - account.held - self.floor
            left = self.tally.left()
        return available if left is None or available < left else left

    def open_holds(self) -> list[Hold]:
        """The holds open now on the account, oldest first (expired ones are reported)."""
        self.expire(self.clock())
        with self.account.lock:
            return list(self.account.holds)


def priced(value: Amount) -> tuple[Decimal, int]:
    """``value`` as an amount and in atoms (see :func:`to_atoms`); int and text amounts,
    which recur, are converted once.

    Raises:
        TypeError, ValueError: As :func:`~spendguard._money.to_amount`.
    """
    kind = type(value)
    if kind is int or kind is str:
        hit = _PRICED.get(value)
        if hit is not None:
            return hit
    amount = to_amount(value)
    result = (amount, to_atoms(amount))
    if (kind is int or kind is str) and len(_PRICED) < 256:
        _PRICED[value] = result
    return result


def to_atoms(amount: Decimal) -> int:
    """A cost in atoms, rounded up (see ``_money``); cached for the amounts that recur."""
    cached = _ATOMS.get(amount)
    if cached is None:
        cached = atoms_up(amount)
        if len(_ATOMS) < 256:
            _ATOMS[amount] = cached
    return cached


_ATOMS: dict[Decimal, int] = {}
_PRICED: dict[object, tuple[Decimal, int]] = {}

__all__ = ["ATOM", "CONTEXT", "EXPIRED", "Engine", "tidy", "to_atoms"]
