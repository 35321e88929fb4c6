"""One balance for many workers: a :class:`~spendguard.Ledger` kept in Redis.

Guards in different processes (or on different machines) that watch the same account
share its balance snapshot, the spending since it, and the open holds, so together they
never admit more than the account holds::

    import spendguard as sg
    from spendguard.redis import RedisLedger

    ledger = RedisLedger.from_url("redis://localhost:6379/0")
    guard = sg.SpendGuard(sg.Hyper3D(), ttl=60, ledger=ledger)

Each admission, settle or release is one atomic ``EVALSHA`` of a Lua script; times come
from Redis ``TIME``. A Redis Cluster works too (``redis+cluster://`` URLs, or a
``redis.cluster.RedisCluster`` client). Needs ``pip install 'spendguard-preflight[redis]'``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from types import TracebackType
from typing import Any, Literal, Union

try:
    import redis
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.cluster import RedisCluster
    from redis.crc import key_slot
    from redis.exceptions import NoScriptError, RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "spendguard.redis needs the redis package: pip install 'spendguard-preflight[redis]'"
    ) from exc

from ._check import Check, Source
from ._errors import (
    ConfigurationError,
    LedgerError,
    ProviderError,
)
from ._heartbeat import Heartbeat
from ._ledger import Admission
from ._lookup_failure import failure_record, rebuild_failure
from ._redis_scripts import SCRIPT, SHA

__all__ = ["MAX_AMOUNT", "SCALE", "RedisLedger"]

log = logging.getLogger("spendguard")

OnLedgerError = Literal["raise", "local"]
Client = Union[redis.Redis, RedisCluster]  # noqa: UP007 - a runtime alias, for isinstance

SCALE = Decimal("1e-6")
"""The ledger counts amounts in whole multiples of this fraction of the provider's unit
(finer than both providers' own resolution: 10^-5 dollar, 0.1 credit)."""

MAX_AMOUNT = Decimal(10**9)
"""The largest amount the ledger counts, in the provider's unit (one billion): a larger
balance counts as this much, a larger cost is refused, a larger charge is recorded as this
much."""

_PER_UNIT = 6  # decimal places of SCALE
_CONTEXT = Context(prec=60, Emin=-999999, Emax=999999)  # exact for any amount the guard takes
_ONE = Decimal(1)
_MAX_UNITS = 10**15  # MAX_AMOUNT in units: sums of a few stay below 2^53, exact in Lua
_MAX_MICROS = 2**52
_RECOVERY_BEATS = 3
_SEP = "\x1f"  # between packed arguments and reply fields: never in ids, numbers or JSON
_MAX_ACCOUNTS = 4096  # account keys remembered
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_POLICIES = ("raise", "local")

# What the heartbeat keeps per open hold: account, amount in units, expiry in µs, and the
# time.monotonic() after which the hold's own hold_ttl has run out (inf: never).
_Open = tuple[str, int, int, float]


class RedisLedger:
    """Keeps every guard's view of an account in one Redis, for fleets of processes.

    Per account (keyed by the provider's ``account_id``, which never contains the key):
    the balance snapshot and when it was looked up, spending since, and open holds with
    their expiry. Admission is one atomic script run: ``snapshot - spent since - held -
    floor >= amount`` adds the hold. When the snapshot is stale, one process across the
    fleet looks the balance up (a lock key with an expiry) while the others wait for its
    answer, so the provider sees one lookup per ``ttl`` for the whole fleet. Every key of
    an account carries the hash tag ``{account_id}``, so a Redis Cluster keeps them in one
    slot and an admission is still one script run on one node.

    **Amounts** are integers of 10^-6 of the provider's unit (:data:`SCALE`), up to one
    billion of the unit (:data:`MAX_AMOUNT`), always rounded toward refusing: a cost, a
    floor or a charge finer than that is rounded up, a balance down; a balance above the
    range counts as :data:`MAX_AMOUNT`, a cost above it is refused (a hold forced through
    by a failure policy holds more than any balance), a charge above it is recorded as
    :data:`MAX_AMOUNT`, and the hold always ends.

    **Holds live as long as their process.** Every hold this ledger hands out is renewed
    every ``heartbeat`` seconds, all of the process's open holds in one round trip, from
    a daemon thread, however long the call runs, until it ends or its guard's
    ``hold_ttl`` runs out. A process that dies stops renewing: its holds expire
    ``max_hold_ttl`` seconds after their last renewal (sooner if their ``hold_ttl`` is).

    **Lost state.** When Redis loses the ledger's keys (a restart without persistence, a
    flush, an eviction), the next heartbeat of every live process re-announces its open
    holds. An account whose state is missing, whoever finds it missing, admits nothing
    for ``recovery`` seconds (three heartbeats) after the state is created again: an
    admission waits that long (at most ``lock_timeout``; beyond that it raises
    :class:`~spendguard.LedgerError` with ``retry_after``), so every live holder is counted
    before anything new is admitted, and the balance is then looked up again. Redis
    cannot tell a lost state from one never created, so an account's very first
    admission waits the same window once.

    One ledger serves every thread of a process (redis-py's pool gives each thread its
    own connection) and survives ``fork`` (the child opens new connections and renews
    only its own holds). Coroutines ask Redis from a worker thread, so an admission never
    blocks the event loop; a task cancelled meanwhile holds nothing. Settling or releasing
    is one round trip made where the hold ends, on the loop too, so that cancellation
    cannot interrupt it.

    Args:
        client: A ``redis.Redis`` or ``redis.cluster.RedisCluster`` client. Give it socket
            timeouts: a slow Redis should fail a decision, not stall it. It is not closed
            by :meth:`close`.
        namespace: Prefix of every key, so that several applications can share a Redis.
        on_ledger_error: When Redis cannot be used while deciding: ``"raise"`` (default)
            raises :class:`~spendguard.LedgerError` and the call does not run; ``"local"``
            logs a WARNING and decides from the process's own ledger, as a guard without
            a shared ledger does, for a second before trying Redis again. Calls are never
            let through unchecked either way. A settle or release that cannot reach Redis
            is logged and retried with the next decision; its hold expires meanwhile.
        max_hold_ttl: Seconds a hold stays in Redis after its last renewal: how long a
            killed worker's holds block the fleet. A guard's shorter ``hold_ttl`` is kept.
        lock_timeout: How long one process may take to look the balance up before another
            may try; others wait at most about this long for its answer, or for the end
            of a recovery.
        heartbeat: Seconds between two renewals of this process's open holds; at most
            half of ``max_hold_ttl``. ``None`` (default): ``min(1, max_hold_ttl / 3)``.

    Raises:
        ConfigurationError: An option is out of range.
        TypeError: ``client`` is not a Redis client.
    """

    def __init__(
        self,
        client: Client,
        *,
        namespace: str = "spendguard",
        on_ledger_error: OnLedgerError = "raise",
        max_hold_ttl: float = 300.0,
        lock_timeout: float = 10.0,
        heartbeat: float | None = None,
    ) -> None:
        if not isinstance(client, (redis.Redis, RedisCluster)):
            raise TypeError(
                f"client must be a redis.Redis or redis.cluster.RedisCluster, "
                f"got {type(client).__name__}"
            )
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, got {namespace!r}")
        if on_ledger_error not in _POLICIES:
            raise ConfigurationError(
                f"on_ledger_error must be 'raise' or 'local', got {on_ledger_error!r}"
            )
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.namespace = namespace
        self._on_ledger_error: OnLedgerError = on_ledger_error
        self.max_hold_ttl = _positive_seconds(max_hold_ttl, "max_hold_ttl")
        self.lock_timeout = _positive_seconds(lock_timeout, "lock_timeout")
        beat = min(1.0, self.max_hold_ttl / 3) if heartbeat is None else heartbeat
        self.heartbeat = _positive_seconds(beat, "heartbeat")
        if self.heartbeat > self.max_hold_ttl / 2:
            raise ConfigurationError(
                f"heartbeat ({self.heartbeat:g} s) must be at most half of max_hold_ttl "
                f"({self.max_hold_ttl:g} s), or holds expire between renewals"
            )
        self.recovery = _RECOVERY_BEATS * self.heartbeat
        """Seconds an account admits nothing after its state was (re)created."""
        self._window = str(_micros(self.recovery))
        self._keys: dict[str, tuple[str, str, str]] = {}
        self._where = _describe(client)
        self._owns_client = False
        self._worker = os.urandom(6).hex()
        self._serial = itertools.count(1)
        self._beat: Heartbeat[str, _Open] = Heartbeat(
            self._renew_open, self.heartbeat, "spendguard-ledger-heartbeat"
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "spendguard",
        on_ledger_error: OnLedgerError = "raise",
        max_hold_ttl: float = 300.0,
        lock_timeout: float = 10.0,
        heartbeat: float | None = None,
        socket_timeout: float = 1.0,
        cluster: bool = False,
        **options: Any,
    ) -> RedisLedger:
        """A ledger on a client it creates from ``url``, and closes with :meth:`close`.

        The client gets ``socket_timeout`` for connecting and for every reply, and retries
        a command once, at once, when the connection was broken (a Redis restart leaves
        stale connections in the pool); it never retries after a timeout. A cluster
        client retries twice more, 10-100 ms apart, re-reading the cluster's layout (a
        node failed over or restarted); it connects at once to learn that layout, so a
        cluster that does not answer fails here with redis-py's own error.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
                ``unix://``, or ``redis+cluster://host:port`` (``rediss+cluster://``) for
                a Redis Cluster reached through any of its nodes; the password never
                appears in reprs or errors.
            namespace: See :class:`RedisLedger`.
            on_ledger_error: See :class:`RedisLedger`.
            max_hold_ttl: See :class:`RedisLedger`.
            lock_timeout: See :class:`RedisLedger`.
            heartbeat: See :class:`RedisLedger`.
            socket_timeout: Seconds to wait for a connection or a reply.
            cluster: Use a ``redis.cluster.RedisCluster`` client whatever the URL's scheme.
            **options: Passed on to ``redis.Redis.from_url`` (or ``RedisCluster.from_url``).
        """
        timeout = _positive_seconds(socket_timeout, "socket_timeout")
        options.setdefault("socket_timeout", timeout)
        options.setdefault("socket_connect_timeout", timeout)
        scheme, sep, rest = url.partition("://")
        client: Client
        if scheme in _CLUSTER_SCHEMES or cluster:
            options.setdefault("retry", Retry(ExponentialBackoff(cap=0.1, base=0.01), 2))
            client = RedisCluster.from_url(
                f"{_CLUSTER_SCHEMES.get(scheme, scheme)}{sep}{rest}", **options
            )
        else:
            options.setdefault(
                "retry", Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
            )
            client = redis.Redis.from_url(url, **options)
        try:
            ledger = cls(
                client,
                namespace=namespace,
                on_ledger_error=on_ledger_error,
                max_hold_ttl=max_hold_ttl,
                lock_timeout=lock_timeout,
                heartbeat=heartbeat,
            )
        except BaseException:
            client.close()
            raise
        ledger._owns_client = True
        return ledger

    @property
    def client(self) -> Client:
        """The Redis client."""
        return self._client

    @property
    def on_ledger_error(self) -> OnLedgerError:
        """``"raise"`` or ``"local"``: see :class:`RedisLedger`."""
        return self._on_ledger_error

    def close(self) -> None:
        """Stop renewing holds, and close the client if :meth:`from_url` created it."""
        self._beat.stop()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RedisLedger({self._where!r}, namespace={self.namespace!r}, "
            f"on_ledger_error={self._on_ledger_error!r})"
        )

    def keys(self, account_id: str) -> tuple[str, str, str]:
        """The account's Redis keys: state, holds and expiry.

        For inspection and tests; the layout is described in ``spendguard._redis_scripts``.
        They share one hash tag, so Redis Cluster puts them in one slot.
        """
        keys = self._keys.get(account_id)
        if keys is None:
            prefix = f"{self.namespace}:{{{account_id}}}"
            keys = (f"{prefix}:state", f"{prefix}:holds", f"{prefix}:expiry")
            if len(self._keys) < _MAX_ACCOUNTS:
                self._keys[account_id] = keys
        return keys

    def open_holds(self) -> dict[str, tuple[str, Decimal]]:
        """This process's holds that are renewed now: hold id to (account, amount)."""
        return {
            hold_id: (account_id, _amount(str(units)))
            for hold_id, (account_id, units, _, _) in self._beat.snapshot().items()
        }

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
            LedgerError: Redis cannot be used, the account's state is being recovered for
                longer than ``lock_timeout``, or another process's lookup took longer than
                ``lock_timeout``.
        """
        units, floor_units = _units(amount), _units(floor)
        hold_id = "" if hold_ttl is None else self._hold_id()
        hold_us = "" if hold_ttl is None else self._hold_micros(hold_ttl)
        token = hold_id or self._hold_id()
        lock_ms = max(1, math.ceil(self.lock_timeout * 1000))
        seen = ""
        waited = 0.0
        delay = 0.001
        discarded = 0
        while True:
            reply = self._run(
                account_id,
                "admit",
                units,
                floor_units,
                hold_id,
                hold_us,
                _micros(ttl),
                _micros(refresh_interval),
                "" if max_stale is None else _micros(max_stale),
                "0" if lookup is None else "1",
                token,
                lock_ms,
                seen,
            )
            status = reply[0]
            if status in ("ok", "short"):
                source: Source = "remote" if waited or reply[5] == "remote" else "cache"
                admission = _admission(reply, status == "ok", source, hold_id)
                return self._track(account_id, admission, units, hold_ttl)
            if status == "unknown":
                return Admission(False, None, _amount(reply[3]), "cache", None)
            if status == "refresh":
                assert lookup is not None
                answer = self._refresh(
                    account_id,
                    reply,
                    lookup,
                    amount=amount,
                    floor=floor,
                    token=token,
                    hold_id=hold_id,
                    hold_us=hold_us,
                    ttl=ttl,
                )
                if isinstance(answer, Admission):
                    return self._track(account_id, answer, units, hold_ttl)
                reply, status = answer, answer[0]
                if status == "wait":
                    discarded += 1
                    if discarded > 1:
                        raise LedgerError(
                            f"balance lookups took longer than lock_timeout "
                            f"({self.lock_timeout:g} s) twice; their answers were dropped",
                            ledger=self._where,
                        )
                    continue
            if status == "recovering":
                waited += self._wait_for_recovery(reply, waited)
                continue
            self._raise_for(status, reply)
            if not seen:
                seen = reply[5]
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
        """See :meth:`spendguard.Ledger.hold`.

        Raises:
            LedgerError: Redis cannot be used.
        """
        units = _units(amount)
        hold_id = self._hold_id()
        reply = self._run(account_id, "hold", units, hold_id, self._hold_micros(hold_ttl))
        return self._track(account_id, _admission(reply, True, "cache", hold_id), units, hold_ttl)

    def end(self, account_id: str, hold_id: str | None, charged: Decimal | None) -> None:
        """See :meth:`spendguard.Ledger.end`. A charge above :data:`MAX_AMOUNT` is recorded
        as that much; the hold ends whatever the charge.

        Raises:
            LedgerError: Redis cannot be used.
        """
        if hold_id:
            self._beat.discard(hold_id)
        spent = "" if charged is None else min(_units(charged), _MAX_UNITS)
        self._run(account_id, "end", hold_id or "", spent)

    def renew(self, account_id: str, hold_id: str, hold_ttl: float) -> bool:
        """Push hold ``hold_id``'s expiry back to ``hold_ttl`` seconds from now (Redis
        ``TIME``), cut to ``max_hold_ttl``: its owner is still using it (a batch). The
        heartbeat renews it from then on for ``hold_ttl`` more seconds.

        Optional for a :class:`~spendguard.Ledger`; guards call it when it is there.

        Returns:
            Whether the hold was still there; a hold that is gone (ended, expired, lost
            with the ledger's state) is not brought back by this call.

        Raises:
            LedgerError: Redis cannot be used.
        """
        tracked = self._beat.snapshot().get(hold_id)
        if tracked is not None:
            deadline = time.monotonic() + hold_ttl
            self._beat.add(hold_id, (*tracked[:3], deadline))
        reply = self._run(account_id, "renew", hold_id, self._hold_micros(hold_ttl))
        return reply[5] == "1"

    def invalidate(self, account_id: str) -> None:
        """See :meth:`spendguard.Ledger.invalidate`.

        Raises:
            LedgerError: Redis cannot be used.
        """
        self._run(account_id, "invalidate")

    # -- internals ---------------------------------------------------------------------

    def _track(
        self, account_id: str, admission: Admission, units: int, hold_ttl: float | None
    ) -> Admission:
        """Have the heartbeat renew an admitted hold until it ends or ``hold_ttl`` runs out."""
        if admission.hold_id is not None and hold_ttl is not None:
            deadline = time.monotonic() + hold_ttl
            self._beat.add(
                admission.hold_id,
                (account_id, min(units, _MAX_UNITS + 1), self._hold_micros(hold_ttl), deadline),
            )
        return admission

    def _renew_open(self, open_now: Mapping[str, _Open]) -> None:
        """One heartbeat: renew (or re-announce) every open hold, one round trip per Redis
        (per slot on a cluster)."""
        now = time.monotonic()
        accounts: dict[str, list[tuple[str, int, int]]] = {}
        for hold_id, (account_id, units, ttl_us, deadline) in open_now.items():
            left = deadline - now
            if left <= 0:
                self._beat.discard(hold_id)  # its hold_ttl ran out: it expires in Redis
                continue
            ttl = min(ttl_us, _micros(left))
            accounts.setdefault(account_id, []).append((hold_id, units, ttl))
        groups: dict[int, list[str]] = {}
        for account_id in accounts:
            slot = key_slot(self.keys(account_id)[0].encode()) if self._cluster else 0
            groups.setdefault(slot, []).append(account_id)
        for group in groups.values():
            self._beat_group(group, accounts)

    def _beat_group(
        self, group: Sequence[str], accounts: Mapping[str, list[tuple[str, int, int]]]
    ) -> None:
        keys: list[str] = []
        argv: list[object] = ["beat", self._window]  # packed like _run's
        for account_id in group:
            keys.extend(self.keys(account_id))
            holds = accounts[account_id]
            argv.append(len(holds))
            for hold in holds:
                argv.extend(hold)
        raw = self._eval("renew held amounts", keys, _SEP.join(map(str, argv)))
        still_open = None
        for account_id, answer in zip(group, raw, strict=True):
            created, *recreated = [_text(part) for part in answer]
            if created == "1" or recreated:
                log.warning(
                    "%s had lost held amounts of account %r (Redis restarted without "
                    "persistence or was flushed, or this process was stalled past their "
                    "expiry): %d re-announced",
                    self._where,
                    account_id,
                    len(recreated),
                )
            if recreated:
                # A hold ended while this beat was on its way was just created again.
                if still_open is None:
                    still_open = self._beat.snapshot()
                for hold_id in recreated:
                    if hold_id not in still_open:
                        self._run(account_id, "end", hold_id, "")

    def _wait_for_recovery(self, reply: list[str], waited: float) -> float:
        """Sleep until the account's recovery window ends; raise when that is too long."""
        left = int(reply[5]) / 1e6
        if waited + left > self.lock_timeout:
            raise LedgerError(
                "the ledger lost its state (Redis restarted without persistence, or was "
                "flushed); admissions wait until every live process has re-announced its "
                "holds",
                ledger=self._where,
                retry_after=left,
            )
        log.info("%s: waiting %.2f s for live processes to re-announce holds", self._where, left)
        time.sleep(left + 0.001)
        return left

    def _refresh(
        self,
        account_id: str,
        reply: list[str],
        lookup: Callable[[Decimal], Check],
        *,
        amount: Decimal,
        floor: Decimal,
        token: str,
        hold_id: str,
        hold_us: int | str,
        ttl: float,
    ) -> Admission | list[str]:
        """Look the balance up for the fleet (this process holds the lock) and decide;
        the script's reply when it did not decide."""
        spent_before, started = reply[5], reply[6]
        try:
            check = lookup(amount + _amount(reply[3]) + floor)
        except ProviderError as exc:
            self._give_up(account_id, token, failure_record(exc))
            raise
        except BaseException:
            self._give_up(account_id, token, "")
            raise
        balance = _balance_units(check.available)
        reply = self._run(
            account_id,
            "commit",
            token,
            balance,
            spent_before,
            started,
            "1" if check.sufficient else "0",
            _units(amount),
            _units(floor),
            hold_id,
            hold_us,
            _micros(ttl),
        )
        status = reply[0]
        if status in ("ok", "short"):
            return _admission(reply, status == "ok", "remote", hold_id, check)
        return reply

    def _give_up(self, account_id: str, token: str, record: str) -> None:
        """Release the lookup lock, sharing the failure for a moment; never raises."""
        try:
            self._run(account_id, "fail", token, record, 1000)
        except LedgerError as exc:
            log.debug("could not release the lookup lock (it expires by itself): %s", exc)

    def _raise_for(self, status: str, reply: list[str]) -> None:
        if status == "failed":
            raise rebuild_failure(reply[5])
        if status != "wait":
            raise LedgerError(f"unexpected answer from the ledger: {status!r}", ledger=self._where)

    def _run(self, account_id: str, op: str, *args: object) -> list[str]:
        """One operation on one account: its arguments go packed in one string, its
        answer comes back in one (fewer arguments and replies to encode and parse)."""
        head = (op,) if op == "end" else (op, self._window)
        packed = _SEP.join([*head, *map(str, args)])
        status, epoch, available, held, age, extra2, extra1 = _text(
            self._eval(op, self.keys(account_id), packed)
        ).split(_SEP, 6)
        return [status, epoch, available, held, age, extra1, extra2]

    def _eval(self, op: str, keys: Sequence[str], packed: str) -> Any:
        """Run the script once (loading it where it is missing); errors become
        :class:`~spendguard.LedgerError` here, in this one place."""
        client: Any = self._client
        with self._translate(op):
            try:
                return client.evalsha(SHA, len(keys), *keys, packed)
            except NoScriptError:
                # EVAL goes where the keys live (on a cluster too) and caches the script.
                return client.eval(SCRIPT, len(keys), *keys, packed)

    @contextlib.contextmanager
    def _translate(self, op: str) -> Iterator[None]:
        """Turn every redis-py error into a LedgerError, in this one place."""
        try:
            yield
        except RedisError as exc:
            detail = str(exc) or type(exc).__name__
            raise LedgerError(f"{op} failed: {detail}", ledger=self._where) from exc

    def _hold_id(self) -> str:
        # The pid at call time: a forked child continues the parent's serial numbers.
        return f"{self._worker}:{os.getpid()}:{next(self._serial)}"

    def _hold_micros(self, hold_ttl: float) -> int:
        return _micros(min(hold_ttl, self.max_hold_ttl))


def _admission(
    reply: list[str], admitted: bool, source: Source, hold_id: str, check: Check | None = None
) -> Admission:
    available = None if reply[2] == "" else _amount(reply[2])
    age = None if reply[4] == "" else max(int(reply[4]), 0) / 1e6
    return Admission(
        admitted=admitted,
        available=available,
        held=_amount(reply[3]),
        source=source,
        age=age,
        hold_id=hold_id if admitted and hold_id else None,
        check=check,
    )


@functools.lru_cache(maxsize=256)
def _units(value: Decimal) -> int:
    """A cost, floor or charge in units of :data:`SCALE`, rounded up; above the range,
    one unit more than :data:`MAX_AMOUNT` (which no balance covers)."""
    whole = value.scaleb(_PER_UNIT, _CONTEXT).to_integral_value(ROUND_CEILING, _CONTEXT)
    return int(whole) if whole <= _MAX_UNITS else _MAX_UNITS + 1


def _balance_units(balance: Decimal) -> int:
    """A looked-up balance in units, rounded down and capped: never more than there is."""
    whole = int(balance.scaleb(_PER_UNIT, _CONTEXT).to_integral_value(ROUND_FLOOR, _CONTEXT))
    return max(-_MAX_UNITS, min(whole, _MAX_UNITS))


@functools.lru_cache(maxsize=256)
def _amount(units: str) -> Decimal:
    """Units back to an amount, without trailing zeros: ``500000`` is ``0.5``."""
    value = Decimal(int(units)).scaleb(-_PER_UNIT, _CONTEXT).normalize(_CONTEXT)
    return value.quantize(_ONE) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def _text(part: object) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


def _micros(seconds: float) -> int:
    return int(min(seconds * 1e6, _MAX_MICROS))


def _positive_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _describe(client: Client) -> str:
    """``redis://host:port/db``, ``unix://path`` or ``redis+cluster://host:port``, without
    user or password."""
    if isinstance(client, RedisCluster):
        cluster: Any = client
        node = cluster.get_default_node()
        host = f"[{node.host}]" if ":" in str(node.host) else node.host
        return f"redis+cluster://{host}:{node.port}"
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={db}"
    ssl = "SSL" in getattr(pool, "connection_class", type(None)).__name__
    scheme = "rediss" if ssl else "redis"
    host = kwargs.get("host", "localhost")
    host = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{db}"
