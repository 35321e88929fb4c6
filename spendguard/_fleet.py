"""A guard's client of a shared :class:`~spendguard.Ledger`: asks, converts, returns data.

The ledger decides for the whole fleet; the engine applies the guard's own budget and
failure policy to what this client returns (``_policy``), and never is called back from
here. Endings that cannot reach the ledger are kept and retried before the next request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Generic, Literal, NamedTuple, TypeVar

from ._check import Check, Source
from ._errors import LedgerError
from ._ledger import Admission, Ledger
from ._money import atoms_down, from_atoms

log = logging.getLogger("spendguard")

T = TypeVar("T")
_MAX_UNRECORDED = 1000
_ZERO = Decimal(0)


class Answer(NamedTuple):
    """A ledger's :class:`~spendguard.Admission`, in atoms."""

    admitted: bool
    available: int | None
    source: Source
    age: float | None
    hold_id: str | None
    check: Check | None


class Fleet:
    """One guard's account in a shared ledger."""

    def __init__(self, ledger: Ledger, account_id: str, name: str) -> None:
        if not isinstance(ledger, Ledger):
            raise TypeError(f"ledger must implement spendguard.Ledger, got {type(ledger).__name__}")
        self.ledger = ledger
        self._account_id = account_id
        self._name = name
        self._lock = threading.Lock()
        self._unrecorded: list[tuple[str | None, Decimal | None]] = []

    def __repr__(self) -> str:
        return f"<Fleet {self._name!r} on {self.ledger!r}>"

    @property
    def on_ledger_error(self) -> Literal["raise", "local"]:
        """The ledger's policy for its own failures."""
        return self.ledger.on_ledger_error

    def admit(
        self,
        amount: int,
        *,
        hold: bool,
        floor: int,
        hold_ttl: float,
        ttl: float,
        refresh_interval: float,
        lookup: Callable[[Decimal], Check] | None,
        max_stale: float | None,
    ) -> Answer:
        """Ask the ledger to admit ``amount`` (and hold it when ``hold``).

        Raises:
            ProviderError: The lookup failed, here or in the process that made it.
            LedgerError: The ledger cannot be used.
        """
        self.flush()
        answer = self.ledger.admit(
            self._account_id,
            from_atoms(amount),
            floor=from_atoms(floor),
            hold_ttl=hold_ttl if hold else None,
            ttl=ttl,
            refresh_interval=refresh_interval,
            lookup=lookup,
            max_stale=max_stale,
        )
        return _answer(answer)

    def hold(self, amount: int, *, hold_ttl: float) -> Answer:
        """Hold ``amount`` whatever the balance (a fallback lets a call through).

        Raises:
            LedgerError: The ledger cannot be used.
        """
        return _answer(self.ledger.hold(self._account_id, from_atoms(amount), hold_ttl=hold_ttl))

    def end(self, hold_id: str | None, charged: Decimal | None) -> None:
        """End ``hold_id`` charging ``charged``; never raises: an ending the ledger did not
        take is retried before the next request (the hold expires there meanwhile)."""
        if hold_id is None and not charged:
            return
        try:
            self.ledger.end(self._account_id, hold_id, charged)
        except LedgerError as exc:
            log.warning(
                "%s: could not end a hold in the ledger (%s); retrying with the next "
                "decision, and the hold expires meanwhile",
                self._name,
                exc,
            )
            with self._lock:
                pending = self._unrecorded
                pending.append((hold_id, charged))
                if len(pending) > _MAX_UNRECORDED:
                    total = sum((c for _, c in pending if c is not None), _ZERO)
                    self._unrecorded = [(None, total)]

    def flush(self) -> None:
        """Retry the endings that could not reach the ledger, oldest first.

        Raises:
            LedgerError: The ledger still cannot be used (the rest stay queued).
        """
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

    def read(
        self,
        *,
        floor: int,
        ttl: float,
        refresh_interval: float,
        lookup: Callable[[Decimal], Check],
    ) -> tuple[int | None, int]:
        """The fleet's snapshot, looked up when stale: (what is available net of every
        process's holds and ``floor``, or ``None`` when unknown; what they hold).

        Raises:
            ProviderError, LedgerError: As :meth:`admit`.
        """
        self.flush()
        answer = self.ledger.admit(
            self._account_id,
            _ZERO,
            floor=from_atoms(floor),
            hold_ttl=None,
            ttl=ttl,
            refresh_interval=refresh_interval,
            lookup=lookup,
        )
        available = answer.available
        return (None if available is None else atoms_down(available)), atoms_down(answer.held)

    def invalidate(self) -> None:
        """Make every process look the balance up again; never raises."""
        try:
            self.ledger.invalidate(self._account_id)
        except LedgerError as exc:
            log.warning("%s: could not invalidate the shared balance: %s", self._name, exc)

    def handoff(self, undo: Callable[[T], None]) -> Handoff[T]:
        """A :class:`Handoff` for one decision made in a worker thread."""
        return Handoff(undo)


def _answer(admission: Admission) -> Answer:
    available = admission.available
    return Answer(
        admission.admitted,
        None if available is None else atoms_down(available),
        admission.source,
        admission.age,
        admission.hold_id,
        admission.check,
    )


class Handoff(Generic[T]):
    """Hands a worker thread's result to a coroutine, or to ``undo`` if the coroutine was
    cancelled meanwhile: whichever side comes second gives the result back."""

    def __init__(self, undo: Callable[[T], None]) -> None:
        self._undo = undo
        self._lock = threading.Lock()
        self._abandoned = False
        self._result: list[T] = []

    def run(self, fn: Callable[..., T], *args: object) -> T:
        """Call ``fn(*args)`` (in the worker thread)."""
        result = fn(*args)
        with self._lock:
            if not self._abandoned:
                self._result.append(result)
                return result
        self._undo(result)
        return result

    def abandon(self) -> None:
        """The coroutine was cancelled: undo the result now, or when it comes."""
        with self._lock:
            self._abandoned = True
            finished = self._result
        if finished:
            threading.Thread(target=self._undo, args=(finished[0],)).start()
