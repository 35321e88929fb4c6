"""The in-process ledger: one shared balance snapshot and one set of holds per account."""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from decimal import Decimal

from ._check import Check
from ._errors import ProviderError

Clock = Callable[[], float]


class Account:
    """One account's state in this process, shared by every guard on it.

    ``balance`` is the last looked-up balance, taken at ``balance_at``; ``fetched_at`` is
    the same time while the snapshot may be trusted, ``None`` once invalidated. ``spent``
    is what guarded calls spent since that lookup began and ``held`` what calls in flight
    hold. Read and write these under ``lock``.
    ``lookups`` counts finished lookups; it lets a thread that waited for someone else's
    lookup use that answer instead of making its own (single-flight).
    """

    __slots__ = (
        "__weakref__",
        "account_id",
        "balance",
        "balance_at",
        "failure",
        "fetched_at",
        "held",
        "lock",
        "lookups",
        "refresh_lock",
        "spent",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.balance: Decimal | None = None
        self.fetched_at: float | None = None
        self.balance_at: float | None = None
        self.spent = Decimal(0)
        self.held = Decimal(0)
        self.lookups = 0
        self.failure: tuple[int, ProviderError] | None = None

    def refresh(self, lookup: Callable[[], Check], seen: int, clock: Clock) -> Check | None:
        """Run ``lookup`` unless another thread finished one since ``seen`` was read.

        Returns the lookup's answer, or ``None`` when another thread's fresh snapshot
        is to be used instead. Re-raises the error of a lookup that failed while this
        thread waited, so that a failing provider sees one request per burst, not one per
        caller. Spending that ends while the lookup is in flight stays counted.
        """
        with self.refresh_lock:
            with self.lock:
                if self.lookups != seen:
                    failure = self.failure
                    if failure is not None and failure[0] == self.lookups:
                        raise copy.copy(failure[1]) from failure[1]
                    if self.fetched_at is not None:
                        return None
                started = clock()
                spent_before = self.spent
            try:
                result = lookup()
            except ProviderError as exc:
                with self.lock:
                    self.lookups += 1
                    self.failure = (self.lookups, exc)
                raise
            with self.lock:
                self.balance = result.available
                self.fetched_at = self.balance_at = started
                self.spent -= spent_before
                self.lookups += 1
                self.failure = None
            return result

    def invalidate(self) -> None:
        """Forget the snapshot's freshness; the next decision looks the balance up."""
        with self.lock:
            self.fetched_at = None


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


DEFAULT_LEDGER = LocalLedger()
