"""The shared-ledger protocol and its value types: where guards in many processes keep one
account's state together."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import attrs

from ._check import Check, Source

if TYPE_CHECKING:
    pass

Clock = Callable[[], float]


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

    A hold must stay held while the process that took it lives, however long its call
    runs, and expire once that process is gone (killed, or its machine lost): a guard asks
    for holds with ``hold_ttl=inf`` and ends them itself, also when its own ``hold_ttl``
    runs out. The bundled ledgers keep a process's holds alive with one renewal per
    heartbeat (see :class:`spendguard.redis.RedisLedger`).
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
