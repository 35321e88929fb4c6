"""One balance for the processes of one machine: a :class:`~spendguard.Ledger` in a SQLite file.

Guards in different processes on the same machine (a process pool, web server workers,
two cron jobs) that watch the same account share its balance snapshot, the spending since
it and the open holds through one database file, so together they never admit more than
the account holds. No server, no extra dependency (the standard library's ``sqlite3``)::

    import spendguard as sg
    from spendguard.sqlite import SQLiteLedger

    ledger = SQLiteLedger("spend.db")                  # one per process
    guard = sg.SpendGuard(sg.Hyper3D(), ttl=60, ledger=ledger)

Each admission, settle or release is one short ``BEGIN IMMEDIATE`` transaction in WAL
mode; a decision that holds nothing and finds a fresh snapshot only reads. The balance
lookup runs outside any transaction, under a lease row with an expiry.

Times come from the ledger's clock, shared by every process of the machine: on Linux
``CLOCK_BOOTTIME`` (system-wide, steady, counts suspended time), with the kernel's boot id
stored beside the times so that after a reboot (when no process that held anything is
alive) every hold is dropped and every snapshot forgotten; elsewhere ``time.time()``, which
moves if the wall clock is set. The file must be on a local disk: SQLite's locking is
unreliable on network filesystems (NFS, SMB).

The file is written with ``synchronous=NORMAL``: a transaction survives the crash of any
process, and a power cut may lose the last ones, after which the reboot drops every hold
and snapshot anyway.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Literal, cast

from . import _sqlite_schema as sql
from ._check import Check, Source
from ._errors import ConfigurationError, LedgerError, ProviderError
from ._heartbeat import Heartbeat
from ._ledger import Admission
from ._lookup_failure import failure_record, rebuild_failure

__all__ = ["MAX_AMOUNT", "SCALE", "SQLiteLedger"]

log = logging.getLogger("spendguard")

OnLedgerError = Literal["raise", "local"]
Clock = Callable[[], float]

SCALE = Decimal("1e-9")
"""The ledger counts amounts in whole multiples of this fraction of the provider's unit."""

MAX_AMOUNT = Decimal(10**9)
"""The largest amount the ledger counts (a billion of the provider's unit): a larger
balance counts as this much, a larger cost is refused, a larger charge or unconditional
hold counts as this much. All of them err on the side of spending less."""

_PER_UNIT = 10**9
_MAX_UNITS = 10**18
_SUM_CAP = 4 * 10**18  # held and spent saturate here, below SQLite's 2**63
_FAILURE_SHARED = 1.0  # seconds a failed lookup's error is handed to other processes
_POLICIES = ("raise", "local")
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_SQLITE_BUSY = 5  # the primary result code; extended codes add high bits

_Opened = tuple["weakref.ref[threading.Thread]", int, sqlite3.Connection]

# Connections a forked child inherited from its parent: kept, never used and never closed,
# because closing them here could checkpoint or unlock what belongs to the parent.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteLedger:
    """Keeps every guard's view of an account in one SQLite file, for the processes of
    one machine.

    Per account (keyed by the provider's ``account_id``, which never contains the key):
    the balance snapshot and when it was looked up, spending since, and open holds with
    their expiry. Admission is one ``BEGIN IMMEDIATE`` transaction: ``snapshot - spent
    since - held - floor >= amount`` adds the hold. When the snapshot is stale, one
    process looks the balance up (it takes a lease row with an expiry, then calls the
    provider outside any transaction) while the others wait for its answer, or its error,
    so the provider sees one lookup per ``ttl`` for every process on the file.

    Holds stay held while their process lives: a daemon thread renews this process's
    open holds in one transaction every ``max_hold_ttl / 3`` seconds. When the process
    dies (``kill -9`` included) its holds expire ``max_hold_ttl`` seconds after their
    last renewal at most, and the balance is then looked up again. A hold also expires
    at its guard's ``hold_ttl`` (``None``: never), as it does without a ledger.

    Amounts are stored as integers of 10^-9 of the provider's unit (:data:`SCALE`): a
    cost, floor or charge finer than that is rounded up and a balance down. Values beyond
    :data:`MAX_AMOUNT` are counted conservatively (see there).

    The file is created (with its tables) on first use, and every process opens its own
    connection per thread (a forked child opens new ones). A database that cannot be used
    is a :class:`~spendguard.LedgerError`, never a bare ``sqlite3`` error: locked by
    someone else for longer than ``busy_timeout``, not a database, read-only, a directory,
    or deleted or replaced while this ledger used it (this ledger then refuses for good:
    the holds in the old file are lost, so a new file must not be trusted by this process).

    Args:
        path: The database file. Every process sharing a balance names the same file, on
            a local disk (SQLite locking is unreliable on network filesystems).
        on_ledger_error: When the file cannot be used while deciding: ``"raise"``
            (default) raises :class:`~spendguard.LedgerError` and the call does not run;
            ``"local"`` logs a WARNING and decides from the process's own ledger for a
            second before trying the file again. Never an unchecked call either way.
        max_hold_ttl: Seconds a hold outlives its process (a crashed worker's holds); the
            heartbeat renews live holds every third of it.
        busy_timeout: Seconds a transaction waits for another process's transaction
            before failing with :class:`~spendguard.LedgerError`.
        lock_timeout: How long one process may take to look the balance up before
            another may try; others wait at most about this long for its answer.
        clock: Seconds, shared by every process on the file (tests pass a fake one);
            ``None``: the machine's clock described in the module docstring.

    Raises:
        ConfigurationError: An option is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_ledger_error: OnLedgerError = "raise",
        max_hold_ttl: float = 300.0,
        busy_timeout: float = 2.0,
        lock_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if on_ledger_error not in _POLICIES:
            raise ConfigurationError(
                f"on_ledger_error must be 'raise' or 'local', got {on_ledger_error!r}"
            )
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"clock must be callable, got {clock!r}")
        self.path = os.path.abspath(os.fspath(path))
        self._on_ledger_error: OnLedgerError = on_ledger_error
        self.max_hold_ttl = _positive_seconds(max_hold_ttl, "max_hold_ttl")
        self.busy_timeout = _positive_seconds(busy_timeout, "busy_timeout")
        self.lock_timeout = _positive_seconds(lock_timeout, "lock_timeout")
        if clock is None:
            self._clock, self._boot = _machine_clock()
        else:
            self._clock, self._boot = clock, ""
        self._where = f"sqlite:{self.path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        # Each thread's connection, beside its thread and process: closed when the thread
        # has ended, left alone in a forked child (SQLite connections must not cross fork).
        self._connections: list[_Opened] = []
        self._file: tuple[int, int] | None = None
        self._worker = secrets.token_hex(6)
        self._serial = itertools.count(1)
        self._heartbeat: Heartbeat[str, str] = Heartbeat(
            self._beat, self.max_hold_ttl / 3, f"spendguard-sqlite-heartbeat:{self.path}"
        )
        _LEDGERS.add(self)

    @property
    def on_ledger_error(self) -> OnLedgerError:
        """``"raise"`` or ``"local"``: see :class:`SQLiteLedger`."""
        return self._on_ledger_error

    def close(self) -> None:
        """Stop renewing this process's holds and close its connections.

        Holds still open then expire after ``max_hold_ttl``. Using the ledger afterwards
        opens new connections (and renews again).
        """
        self._heartbeat.stop()
        with self._lock:
            connections, self._connections = self._connections, []
        pid = os.getpid()
        for _, owner, connection in connections:
            if owner != pid:
                _INHERITED.append(connection)
                continue
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        self._local = threading.local()

    def __enter__(self) -> SQLiteLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteLedger({self.path!r}, on_ledger_error={self._on_ledger_error!r})"

    # -- the Ledger protocol -------------------------------------------------------------

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
        """See :meth:`spendguard.Ledger.admit`.

        Raises:
            ProviderError: The lookup failed, here or in the process that made it.
            LedgerError: The file cannot be used, or another process's lookup took longer
                than ``lock_timeout``.
        """
        ask = _Ask(
            units=_units(amount, up=True),
            fits=amount <= MAX_AMOUNT,
            floor=_units(floor, up=True),
            hold_id=None if hold_ttl is None else self._hold_id(),
            hold_ttl=hold_ttl,
            ttl=ttl,
            refresh=refresh_interval,
            max_stale=max_stale,
            may_look_up=lookup is not None,
        )
        if ask.hold_id is None:
            quick = self._peek(account_id, ask)
            if quick is not None:
                return quick
        token = secrets.token_hex(8)
        seen: int | None = None
        waited = 0.0
        delay = 0.001
        discarded = 0
        while True:
            with self._write("admit") as connection:
                step = self._admit_in(connection, account_id, ask, token, seen)
            if isinstance(step, Admission):
                if waited and step.source == "cache" and step.available is not None:
                    step = _with_source(step, "remote")
                return self._registered(account_id, step)
            kind, value = step
            if kind == "refresh":
                assert lookup is not None
                admission = self._refresh(account_id, ask, lookup, token, value)
                if admission is not None:
                    return self._registered(account_id, admission)
                discarded += 1
                if discarded > 1:
                    raise LedgerError(
                        f"balance lookups took longer than lock_timeout "
                        f"({self.lock_timeout:g} s) twice; their answers were dropped",
                        ledger=self._where,
                    )
                continue
            if kind == "failed":
                assert isinstance(value, str)
                raise rebuild_failure(value)
            if seen is None:
                assert isinstance(value, int)
                seen = value
            if waited > self.lock_timeout:
                raise LedgerError(
                    f"another process's balance lookup did not finish within "
                    f"{self.lock_timeout:g} s",
                    ledger=self._where,
                )
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.05)

    def hold(self, account_id: str, amount: Decimal, *, hold_ttl: float) -> Admission:
        """See :meth:`spendguard.Ledger.hold`; above :data:`MAX_AMOUNT` it holds that much.

        Raises:
            LedgerError: The file cannot be used.
        """
        units = _units(amount, up=True)
        hold_id = self._hold_id()
        with self._write("hold") as connection:
            now = self._clock()
            row = _Row.load(connection, account_id, now)
            available, age = row.available(now, 0)
            row.add_hold(connection, hold_id, units, self._expiry(now, hold_ttl))
            row.save(connection)
        shown = None if available is None else _amount(available)
        admission = Admission(
            True, shown, _amount(row.held), "cache", None if shown is None else age, hold_id
        )
        return self._registered(account_id, admission)

    def end(self, account_id: str, hold_id: str | None, charged: Decimal | None) -> None:
        """See :meth:`spendguard.Ledger.end`. A charge above :data:`MAX_AMOUNT` counts as
        that much; the hold ends whatever ``charged`` is.

        Raises:
            LedgerError: The file cannot be used (the hold then expires by itself once
                this process stops renewing it).
        """
        if hold_id is not None:
            self._heartbeat.discard(hold_id)
        spent = 0 if charged is None else _units(charged, up=True)
        if hold_id is None and not spent:
            return
        # Plain statements, no row read into Python: the write lock is held for less time.
        ending = {"hold": hold_id, "account": account_id, "spent": spent, "cap": _SUM_CAP}
        with self._write("end") as connection:
            if not connection.execute(sql.END_HOLD, ending).rowcount:
                connection.execute(sql.INSERT_ACCOUNT, (account_id,))
                connection.execute(sql.END_HOLD, ending)
            if hold_id is not None:
                connection.execute(sql.DELETE_OWN_HOLD, (hold_id, account_id))

    def renew(self, account_id: str, hold_id: str, hold_ttl: float) -> bool:
        """Push hold ``hold_id``'s ``hold_ttl`` deadline back to ``hold_ttl`` seconds from
        now: its owner is still using it (a batch). Optional for a
        :class:`~spendguard.Ledger`; guards call it when it is there.

        Returns:
            Whether the hold was still there; a hold that is gone (ended, expired) is not
            brought back.

        Raises:
            LedgerError: The file cannot be used.
        """
        with self._write("renew") as connection:
            now = self._clock()
            deadline, expires_at = self._expiry(now, hold_ttl)
            renewed = connection.execute(
                sql.RENEW_HOLD, (deadline, expires_at, hold_id, account_id, now)
            ).rowcount
            if renewed:  # a shorter hold_ttl may bring the expiry forward
                connection.execute(sql.EARLIER_EXPIRY, {"at": expires_at, "account": account_id})
        return renewed == 1

    def invalidate(self, account_id: str) -> None:
        """See :meth:`spendguard.Ledger.invalidate`.

        Raises:
            LedgerError: The file cannot be used.
        """
        with self._write("invalidate") as connection:
            row = _Row.load(connection, account_id, self._clock())
            row.fetched_at = None
            row.save(connection)

    # -- deciding ----------------------------------------------------------------------

    def _peek(self, account_id: str, ask: _Ask) -> Admission | None:
        """Decide a check that holds nothing from a fresh snapshot, reading only; ``None``
        when a write transaction must decide (stale snapshot, a hold may be due)."""
        with self._translate("admit") as connection:
            found = self._patiently(connection, sql.SELECT_ACCOUNT, (account_id,)).fetchone()
            self._check_file()
        if found is None:
            return None
        now = self._clock()
        row = _Row(account_id, found)
        if row.next_expiry is not None and now >= row.next_expiry:
            return None
        if row.fetched_at is None or now - row.fetched_at > ask.ttl:
            return None
        available, age = row.available(now, ask.floor)
        assert available is not None
        admitted = ask.fits and available >= ask.units
        if admitted or not ask.may_look_up or age < ask.refresh:
            return Admission(admitted, _amount(available), _amount(row.held), "cache", age)
        return None

    def _admit_in(
        self,
        connection: sqlite3.Connection,
        account_id: str,
        ask: _Ask,
        token: str,
        seen: int | None,
    ) -> Admission | tuple[str, object]:
        """One admission attempt inside a write transaction: an answer, or what to do
        next: ``("refresh", (spent, started, held))`` (this process holds the lease),
        ``("failed", record)`` or ``("wait", lookups)``."""
        now = self._clock()
        row = _Row.load(connection, account_id, now)
        available, age = row.available(now, ask.floor)

        def decide(source: Source) -> Admission:
            assert available is not None
            return self._decide(
                connection, row, ask, now=now, available=available, age=age, source=source
            )

        try:
            if ask.may_look_up and available is not None and seen not in (None, row.lookups):
                return decide("remote")  # another process looked up while this one waited
            if row.fresh(now, ask.ttl):
                assert available is not None
                enough = ask.fits and available >= ask.units
                if enough or not ask.may_look_up or age < ask.refresh:
                    return decide("cache")
            elif not ask.may_look_up:
                if row.usable(now, ask.max_stale):
                    return decide("cache")
                return Admission(False, None, _amount(row.held), "cache", None)
            if row.failure is not None and now < (row.failure_until or -math.inf):
                return ("failed", row.failure)
            if row.lease_token is None or row.lease_until is None or now >= row.lease_until:
                row.lease_token, row.lease_until = token, now + self.lock_timeout
                return ("refresh", (row.spent, now, row.held))
            if row.usable(now, ask.max_stale):
                return decide("cache")
            return ("wait", row.lookups)
        finally:
            row.save(connection)

    def _decide(
        self,
        connection: sqlite3.Connection,
        row: _Row,
        ask: _Ask,
        *,
        now: float,
        available: int,
        age: float,
        source: Source,
        agrees: bool = True,
        check: Check | None = None,
    ) -> Admission:
        admitted = ask.fits and available >= ask.units and agrees
        hold_id = None
        if admitted and ask.hold_id is not None:
            assert ask.hold_ttl is not None
            hold_id = ask.hold_id
            row.add_hold(connection, hold_id, ask.units, self._expiry(now, ask.hold_ttl))
        return Admission(
            admitted, _amount(available), _amount(row.held), source, age, hold_id, check
        )

    def _refresh(
        self,
        account_id: str,
        ask: _Ask,
        lookup: Callable[[Decimal], Check],
        token: str,
        value: object,
    ) -> Admission | None:
        """Look the balance up for every process (this one holds the lease), store it and
        decide; ``None`` when the lease was lost meanwhile and no fresh snapshot exists."""
        spent_before, started, held = cast("tuple[int, float, int]", value)
        try:
            check = lookup(_amount(ask.units + held + ask.floor))
        except ProviderError as exc:
            self._give_up(account_id, token, failure_record(exc))
            raise
        except BaseException:
            self._give_up(account_id, token, None)
            raise
        balance = _units(check.available, up=False)
        with self._write("admit") as connection:
            now = self._clock()
            row = _Row.load(connection, account_id, now)
            committed = row.lease_token == token
            if committed:
                row.balance = balance
                row.balance_at = row.fetched_at = started
                row.spent = max(row.spent - spent_before, -_SUM_CAP)
                row.lookups += 1
                row.lease_token = row.lease_until = None
                row.failure = row.failure_until = None
            try:
                if not committed and not row.fresh(now, ask.ttl):
                    return None
                available, age = row.available(now, ask.floor)
                assert available is not None
                return self._decide(
                    connection,
                    row,
                    ask,
                    now=now,
                    available=available,
                    age=age,
                    source="remote",
                    agrees=check.sufficient or not committed,
                    check=check,
                )
            finally:
                row.save(connection)

    def _give_up(self, account_id: str, token: str, record: str | None) -> None:
        """Release the lease, sharing the failure for a moment; never raises."""
        try:
            with self._write("admit") as connection:
                now = self._clock()
                row = _Row.load(connection, account_id, now)
                if row.lease_token == token:
                    row.lease_token = row.lease_until = None
                    if record is not None:
                        row.failure, row.failure_until = record, now + _FAILURE_SHARED
                    row.save(connection)
        except LedgerError as exc:
            log.debug("could not release the lookup lease (it expires by itself): %s", exc)

    def _registered(self, account_id: str, admission: Admission) -> Admission:
        """Have the heartbeat renew the hold ``admission`` took, if any."""
        if admission.hold_id is not None:
            self._heartbeat.add(admission.hold_id, account_id)
        return admission

    def _expiry(self, now: float, hold_ttl: float) -> tuple[float | None, float]:
        """A hold's deadline (``None``: none) and when it expires unless renewed."""
        lease = now + self.max_hold_ttl
        if not hold_ttl < math.inf:
            return None, lease
        deadline = now + hold_ttl
        return deadline, min(deadline, lease)

    def _beat(self, open_holds: Mapping[str, str]) -> None:
        """Renew every hold this process has open, in one transaction (the heartbeat)."""
        with self._write("renew") as connection:
            now = self._clock()
            lease = now + self.max_hold_ttl
            gone = [
                hold_id
                for hold_id in open_holds
                if connection.execute(sql.BEAT_HOLD, (lease, lease, hold_id, now)).rowcount == 0
            ]
        for hold_id in gone:
            self._heartbeat.discard(hold_id)

    def _hold_id(self) -> str:
        return f"{self._worker}:{os.getpid()}:{next(self._serial)}"

    # -- the file ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, op: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed when the block returns."""
        with self._translate(op) as connection:
            self._check_file()
            self._patiently(connection, "BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _translate(self, op: str) -> Iterator[sqlite3.Connection]:
        """This thread's connection; every sqlite3 or file error becomes a LedgerError,
        in this one place (and the connection is dropped: the next use opens a new one)."""
        try:
            yield self._connection()
        except (sqlite3.Error, OSError) as exc:
            self._drop_connection()
            detail = str(exc) or type(exc).__name__
            if "locked" in detail:
                detail = f"{detail} (for more than busy_timeout={self.busy_timeout:g} s)"
            raise LedgerError(f"{op} failed: {detail}", ledger=self._where) from exc

    def _patiently(
        self, connection: sqlite3.Connection, statement: str, parameters: tuple[object, ...] = ()
    ) -> sqlite3.Cursor:
        """Execute ``statement``, retrying for up to ``busy_timeout`` while another
        connection has the database locked.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between tries, while a
        transaction here takes tens of microseconds: with 4 processes spending on one
        account, retrying after a short random pause (50 µs, doubling up to 2 ms) gave
        about twice the throughput (``benchmarks/ledger.py``).
        """
        try:
            return connection.execute(statement, parameters)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.00005
        while True:
            time.sleep(pause * (0.5 + random.random()))
            try:
                return connection.execute(statement, parameters)
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            pause = min(pause * 2, 0.002)

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is not None:
            if local.pid == os.getpid():
                return connection
            _INHERITED.append(connection)
        connection = self._open()
        local.connection, local.pid = connection, os.getpid()
        return connection

    def _open(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise LedgerError("the path is a directory, not a database file", ledger=self._where)
        if self._file is not None and not os.path.exists(self.path):
            raise self._replaced()
        # Busy waits are _patiently's and _set_up's, not SQLite's own handler.
        connection = sqlite3.connect(
            self.path, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            self._check_file()
            deadline = time.monotonic() + self.busy_timeout
            pause = 0.001
            while True:
                try:
                    self._set_up(connection)
                    break
                except sqlite3.OperationalError as exc:
                    # Processes setting up a new file at once can deadlock in SQLite's
                    # rollback-journal mode (it then reports busy at once): try again.
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    if not _busy(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.05)
        except BaseException:
            connection.close()
            raise
        pid = os.getpid()
        with self._lock:
            kept: list[_Opened] = []
            ended: list[sqlite3.Connection] = []
            for opened in self._connections:
                thread = opened[0]()
                if opened[1] != pid:
                    _INHERITED.append(opened[2])
                elif thread is None or not thread.is_alive():
                    ended.append(opened[2])
                else:
                    kept.append(opened)
            kept.append((weakref.ref(threading.current_thread()), pid, connection))
            self._connections = kept
        for old in ended:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        return connection

    def _set_up(self, connection: sqlite3.Connection) -> None:
        """WAL mode, the tables, and this boot's times."""
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(
                    f"cannot use WAL mode (journal_mode is {mode!r})", ledger=self._where
                )
        connection.execute("PRAGMA synchronous = NORMAL")
        if connection.execute("PRAGMA user_version").fetchone()[0] != sql.VERSION:
            self._create(connection)
        stored = connection.execute(sql.SELECT_BOOT).fetchone()
        if stored is None or stored[0] != self._boot:
            self._after_reboot(connection)

    def _create(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in sql.CREATE:
                    connection.execute(statement)
            elif version != sql.VERSION:
                raise LedgerError(
                    f"the database has spendguard tables of version {version}; this "
                    f"spendguard reads version {sql.VERSION}",
                    ledger=self._where,
                )
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _after_reboot(self, connection: sqlite3.Connection) -> None:
        """The stored times belong to another boot (or another kind of clock): no process
        holding anything then is alive now, so drop every hold and forget every snapshot."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            stored = connection.execute(sql.SELECT_BOOT).fetchone()
            if stored is None or stored[0] != self._boot:
                for statement in sql.FORGET_ALL:  # nothing to forget in a new file
                    connection.execute(statement)
                connection.execute(sql.SET_BOOT, (self._boot,))
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _check_file(self) -> None:
        """Refuse when the path no longer names the file this ledger first opened."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._file is None:
                raise
            raise self._replaced() from None
        current = (info.st_dev, info.st_ino)
        if self._file is None:
            self._file = current
        elif current != self._file:
            raise self._replaced()

    def _replaced(self) -> LedgerError:
        self._file = (-1, -1)  # for good: the holds in the old file are lost
        return LedgerError(
            "the database file was deleted or replaced while in use; its holds are lost, "
            "so this ledger no longer decides (start the processes again on one file)",
            ledger=self._where,
        )

    def _drop_connection(self) -> None:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()


class _Ask:
    """What one admission asks for, in units."""

    __slots__ = (
        "fits",
        "floor",
        "hold_id",
        "hold_ttl",
        "max_stale",
        "may_look_up",
        "refresh",
        "ttl",
        "units",
    )

    def __init__(
        self,
        *,
        units: int,
        fits: bool,
        floor: int,
        hold_id: str | None,
        hold_ttl: float | None,
        ttl: float,
        refresh: float,
        max_stale: float | None,
        may_look_up: bool,
    ) -> None:
        self.units = units
        self.fits = fits
        self.floor = floor
        self.hold_id = hold_id
        self.hold_ttl = hold_ttl
        self.ttl = ttl
        self.refresh = refresh
        self.max_stale = max_stale
        self.may_look_up = may_look_up


class _Row:
    """One account's row, read in a transaction and written back with :meth:`save`."""

    __slots__ = ("account", *sql.ACCOUNT_COLUMNS)

    balance: int | None
    balance_at: float | None
    fetched_at: float | None
    spent: int
    held: int
    lookups: int
    next_expiry: float | None
    lease_token: str | None
    lease_until: float | None
    failure: str | None
    failure_until: float | None

    def __init__(self, account: str, values: tuple[object, ...]) -> None:
        self.account = account
        for column, value in zip(sql.ACCOUNT_COLUMNS, values, strict=True):
            setattr(self, column, value)

    @classmethod
    def load(cls, connection: sqlite3.Connection, account: str, now: float) -> _Row:
        """The account's row (created if missing), with its expired holds dropped."""
        found = connection.execute(sql.SELECT_ACCOUNT, (account,)).fetchone()
        if found is None:
            connection.execute(sql.INSERT_ACCOUNT, (account,))
            found = connection.execute(sql.SELECT_ACCOUNT, (account,)).fetchone()
        row = cls(account, found)
        if row.next_expiry is not None and now >= row.next_expiry:
            row._expire(connection, now)
        return row

    def _expire(self, connection: sqlite3.Connection, now: float) -> None:
        """Drop holds past their expiry. Their calls may have spent, so the snapshot is no
        longer trusted: the next decision looks the balance up."""
        due = connection.execute(sql.SELECT_DUE, (self.account, now)).fetchall()
        for hold_id, amount in due:
            connection.execute(sql.DELETE_HOLD, (hold_id,))
            self.held -= amount
        if due:
            self.fetched_at = None
        self.next_expiry = connection.execute(sql.NEXT_EXPIRY, (self.account,)).fetchone()[0]

    def add_hold(
        self,
        connection: sqlite3.Connection,
        hold_id: str,
        units: int,
        expiry: tuple[float | None, float],
    ) -> None:
        """Hold ``units`` until ``expiry`` (deadline, expires_at); the sum of the holds
        saturates below SQLite's 64-bit range, where it blocks every admission anyway."""
        deadline, expires_at = expiry
        recorded = max(0, min(units, _SUM_CAP - self.held))
        connection.execute(sql.INSERT_HOLD, (hold_id, self.account, recorded, expires_at, deadline))
        self.held += recorded
        if self.next_expiry is None or expires_at < self.next_expiry:
            self.next_expiry = expires_at

    def available(self, now: float, floor: int) -> tuple[int | None, float]:
        """``balance - spent - held - floor`` in units and the snapshot's age in seconds;
        ``(None, 0)`` before the first lookup."""
        if self.balance is None or self.balance_at is None:
            return None, 0.0
        return self.balance - self.spent - self.held - floor, max(now - self.balance_at, 0.0)

    def fresh(self, now: float, ttl: float) -> bool:
        return self.fetched_at is not None and now - self.fetched_at <= ttl

    def usable(self, now: float, max_stale: float | None) -> bool:
        """A snapshot exists and is at most ``max_stale`` old."""
        return (
            self.balance is not None
            and self.balance_at is not None
            and max_stale is not None
            and now - self.balance_at <= max_stale
        )

    def save(self, connection: sqlite3.Connection) -> None:
        values = [getattr(self, column) for column in sql.ACCOUNT_COLUMNS]
        connection.execute(sql.UPDATE_ACCOUNT, (*values, self.account))


_LEDGERS: weakref.WeakSet[SQLiteLedger] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """A forked child starts with fresh locks (another thread may have held one at fork)."""
    for ledger in list(_LEDGERS):
        ledger._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (``SQLITE_BUSY``)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "locked" in str(exc)


def _with_source(admission: Admission, source: Source) -> Admission:
    return Admission(
        admission.admitted,
        admission.available,
        admission.held,
        source,
        admission.age,
        admission.hold_id,
        admission.check,
    )


def _units(value: Decimal, *, up: bool) -> int:
    """``value`` in whole units of :data:`SCALE`, rounded up (``up``) or down, within
    ``±MAX_AMOUNT``; exact integer arithmetic, whatever the caller's decimal context.

    Never raises: an infinity is the nearest end of the range, and NaN the end that spends
    less (the top for a cost or a charge, the bottom for a balance).
    """
    if not value.is_finite():
        if value.is_nan():
            return _MAX_UNITS if up else -_MAX_UNITS
        return -_MAX_UNITS if value.is_signed() else _MAX_UNITS
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    negative = bool(sign)
    if not any(digits):
        return 0
    if value.adjusted() >= 10:
        return -_MAX_UNITS if negative else _MAX_UNITS
    if value.adjusted() < -10:
        whole, rest = 0, 1
    else:
        coefficient = int("".join(map(str, digits)))
        shift = exponent + 9
        if shift >= 0:
            whole, rest = coefficient * 10**shift, 0
        else:
            whole, rest = divmod(coefficient, 10**-shift)
    if negative:
        whole = -whole - (1 if rest and not up else 0)
    elif rest and up:
        whole += 1
    return max(-_MAX_UNITS, min(whole, _MAX_UNITS))


def _amount(units: int) -> Decimal:
    """Units back to an exact amount without trailing zeros: ``500000000`` is ``0.5``."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), _PER_UNIT)
    digits = f"{fraction:09d}".rstrip("0")
    return Decimal(f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}")


def _positive_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _machine_clock() -> tuple[Clock, str]:
    """The clock every process of the machine shares, and the boot it belongs to."""
    boot_clock = getattr(time, "CLOCK_BOOTTIME", None)
    if boot_clock is not None:
        try:
            with open(_BOOT_ID, encoding="ascii") as file:
                boot = file.read().strip()
        except OSError:
            boot = ""
        if boot:
            clock_id: int = boot_clock

            def boot_time() -> float:
                return time.clock_gettime(clock_id)

            return boot_time, f"boottime:{boot}"
    return time.time, "wall"
