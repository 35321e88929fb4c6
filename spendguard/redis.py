"""One balance for many workers: a :class:`~spendguard.Ledger` kept in Redis.

Guards in different processes (or on different machines) that watch the same account
share its balance snapshot, the spending since it, and the open holds, so together they
never admit more than the account holds::

    import spendguard as sg
    from spendguard.redis import RedisLedger

    ledger = RedisLedger.from_url("redis://localhost:6379/0")
    guard = sg.SpendGuard(sg.Hyper3D(), ttl=60, ledger=ledger)

Each admission, settle or release is one atomic ``EVALSHA`` of a Lua script; times come
from Redis ``TIME``. Needs ``pip install 'spendguard-preflight[redis]'``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from types import TracebackType
from typing import Any, Literal

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "spendguard.redis needs the redis package: pip install 'spendguard-preflight[redis]'"
    ) from exc

from ._check import Check, Source
from ._errors import (
    AuthenticationError,
    BalanceUnavailable,
    ConfigurationError,
    LedgerError,
    ProviderError,
)
from ._ledger import Admission
from ._redis_scripts import SCRIPT, SHA

__all__ = ["SCALE", "RedisLedger"]

log = logging.getLogger("spendguard")

OnLedgerError = Literal["raise", "local"]

SCALE = Decimal("1e-9")
"""The ledger counts amounts in whole multiples of this fraction of the provider's unit."""

_PER_UNIT = 9  # decimal places of SCALE
_ONE = Decimal(1)
_MAX_UNITS = 9 * 10**15  # 9,000,000 of the provider's unit; Lua's doubles stay exact
_MAX_MICROS = 2**52
_POLICIES = ("raise", "local")
_ERRORS: dict[str, type[ProviderError]] = {
    cls.__name__: cls for cls in (ProviderError, AuthenticationError, BalanceUnavailable)
}


class RedisLedger:
    """Keeps every guard's view of an account in one Redis, for fleets of processes.

    Per account (keyed by the provider's ``account_id``, which never contains the key):
    the balance snapshot and when it was looked up, spending since, and open holds with
    their expiry. Admission is one atomic script run: ``snapshot - spent since - held -
    floor >= amount`` adds the hold. When the snapshot is stale, one process across the
    fleet looks the balance up (a lock key with an expiry) while the others wait for its
    answer, so the provider sees one lookup per ``ttl`` for the whole fleet.

    Amounts are stored as integers of 10^-9 of the provider's unit (:data:`SCALE`): a cost
    or floor finer than that is refused with ``ValueError``, a settled amount finer than
    that is rounded up, and no amount may exceed 9,000,000 (a larger balance counts as
    9,000,000).

    When Redis loses the ledger's keys (a restart without persistence, a flush), the holds
    open at that moment are unknown. The first process that saw the old state notices,
    and admissions pause for ``max_hold_ttl`` seconds (each raises :class:`LedgerError`
    with ``retry_after``), long enough for every hold open before the loss to end or
    expire; the balance is then looked up again. Run Redis with persistence (and a
    ``noeviction`` policy) to avoid the pause.

    One ledger serves every thread of a process (redis-py's pool gives each thread its
    own connection) and survives ``fork`` (the child opens new connections). Coroutines
    ask Redis from a worker thread, so an admission never blocks the event loop; a task
    cancelled meanwhile holds nothing. Settling or releasing is one round trip made where
    the hold ends, on the loop too, so that cancellation cannot interrupt it.

    Args:
        client: A ``redis.Redis`` client. Give it socket timeouts: a slow Redis should
            fail a decision, not stall it. It is not closed by :meth:`close`.
        namespace: Prefix of every key, so that several applications can share a Redis.
        on_ledger_error: When Redis cannot be used while deciding: ``"raise"`` (default)
            raises :class:`~spendguard.LedgerError` and the call does not run; ``"local"``
            logs a WARNING and decides from the process's own ledger, as a guard without
            a shared ledger does, for a second before trying Redis again. Calls are never
            let through unchecked either way. A settle or release that cannot reach Redis
            is logged and retried with the next decision; its hold expires meanwhile.
        max_hold_ttl: The longest a hold stays in Redis without being ended (a crashed
            worker's holds): a guard's ``hold_ttl`` above it, or ``None``, is cut to it.
            Also the pause after a loss of state.
        lock_timeout: How long one process may take to look the balance up before another
            may try; others wait at most about this long for its answer.

    Raises:
        ConfigurationError: An option is out of range.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "spendguard",
        on_ledger_error: OnLedgerError = "raise",
        max_hold_ttl: float = 300.0,
        lock_timeout: float = 10.0,
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise TypeError(f"client must be a redis.Redis, got {type(client).__name__}")
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, got {namespace!r}")
        if on_ledger_error not in _POLICIES:
            raise ConfigurationError(
                f"on_ledger_error must be 'raise' or 'local', got {on_ledger_error!r}"
            )
        self._client = client
        self.namespace = namespace
        self._on_ledger_error: OnLedgerError = on_ledger_error
        self.max_hold_ttl = _positive_seconds(max_hold_ttl, "max_hold_ttl")
        self.lock_timeout = _positive_seconds(lock_timeout, "lock_timeout")
        self._where = _describe(client)
        self._owns_client = False
        self._epochs: dict[str, str] = {}
        self._worker = secrets.token_hex(6)
        self._serial = itertools.count(1)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "spendguard",
        on_ledger_error: OnLedgerError = "raise",
        max_hold_ttl: float = 300.0,
        lock_timeout: float = 10.0,
        socket_timeout: float = 1.0,
        **options: Any,
    ) -> RedisLedger:
        """A ledger on a client it creates from ``url``, and closes with :meth:`close`.

        The client gets ``socket_timeout`` for connecting and for every reply, and retries
        a command once, at once, when the connection was broken (a Redis restart leaves
        stale connections in the pool); it never retries after a timeout.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
                or ``unix://``; the password never appears in reprs or errors.
            namespace: See :class:`RedisLedger`.
            on_ledger_error: See :class:`RedisLedger`.
            max_hold_ttl: See :class:`RedisLedger`.
            lock_timeout: See :class:`RedisLedger`.
            socket_timeout: Seconds to wait for a connection or a reply.
            **options: Passed on to ``redis.Redis.from_url``.
        """
        timeout = _positive_seconds(socket_timeout, "socket_timeout")
        options.setdefault("socket_timeout", timeout)
        options.setdefault("socket_connect_timeout", timeout)
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
            )
        except BaseException:
            client.close()
            raise
        ledger._owns_client = True
        return ledger

    @property
    def client(self) -> redis.Redis:
        """The Redis client."""
        return self._client

    @property
    def on_ledger_error(self) -> OnLedgerError:
        """``"raise"`` or ``"local"``: see :class:`RedisLedger`."""
        return self._on_ledger_error

    def close(self) -> None:
        """Close the client if :meth:`from_url` created it."""
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

    def keys(self, account_id: str) -> tuple[str, str, str, str, str]:
        """The account's Redis keys: state, holds, expiry, lock and failure.

        For inspection and tests; the layout is described in ``spendguard._redis_scripts``.
        """
        prefix = f"{self.namespace}:{{{account_id}}}"
        return (
            f"{prefix}:state",
            f"{prefix}:holds",
            f"{prefix}:expiry",
            f"{prefix}:lock",
            f"{prefix}:failure",
        )

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
            ValueError: ``amount`` or ``floor`` is finer than :data:`SCALE` or too large.
            ProviderError: The lookup failed, here or in the process that made it.
            LedgerError: Redis cannot be used, the ledger is recovering from a loss of
                state, or another process's lookup took longer than ``lock_timeout``.
        """
        units, floor_units = _units(amount, "amount"), _units(floor, "floor")
        hold_id = "" if hold_ttl is None else self._hold_id()
        hold_us = "" if hold_ttl is None else self._hold_micros(hold_ttl)
        token = secrets.token_hex(8)
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
                return _admission(reply, status == "ok", source, hold_id)
            if status == "unknown":
                return Admission(False, None, _amount(reply[3]), "cache", None)
            if status == "refresh":
                assert lookup is not None
                admission = self._refresh(
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
                if admission is not None:
                    return admission
                discarded += 1
                if discarded > 1:
                    raise LedgerError(
                        f"balance lookups took longer than lock_timeout "
                        f"({self.lock_timeout:g} s) twice; their answers were dropped",
                        ledger=self._where,
                    )
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
            ValueError: ``amount`` is finer than :data:`SCALE` or too large.
            LedgerError: Redis cannot be used.
        """
        units = _units(amount, "amount")
        hold_id = self._hold_id()
        reply = self._run(account_id, "hold", units, hold_id, self._hold_micros(hold_ttl), 0)
        return _admission(reply, True, "cache", hold_id)

    def end(self, account_id: str, hold_id: str | None, charged: Decimal | None) -> None:
        """See :meth:`spendguard.Ledger.end`.

        Raises:
            LedgerError: Redis cannot be used.
        """
        spent = "" if charged is None else _units(charged, "charged", rounding=ROUND_CEILING)
        self._run(account_id, "end", hold_id or "", spent)

    def renew(self, account_id: str, hold_id: str, hold_ttl: float) -> bool:
        """Push hold ``hold_id``'s expiry back to ``hold_ttl`` seconds from now (Redis
        ``TIME``), cut to ``max_hold_ttl``: its owner is still using it (a batch).

        Optional for a :class:`~spendguard.Ledger`; guards call it when it is there.

        Returns:
            Whether the hold was still there; a hold that is gone (ended, expired, lost
            with the ledger's state) is not brought back.

        Raises:
            LedgerError: Redis cannot be used.
        """
        reply = self._run(account_id, "renew", hold_id, self._hold_micros(hold_ttl))
        return reply[5] == "1"

    def invalidate(self, account_id: str) -> None:
        """See :meth:`spendguard.Ledger.invalidate`.

        Raises:
            LedgerError: Redis cannot be used.
        """
        self._run(account_id, "invalidate")

    # -- internals ---------------------------------------------------------------------

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
    ) -> Admission | None:
        """Look the balance up for the fleet (this process holds the lock) and decide."""
        spent_before, started = reply[5], reply[6]
        try:
            check = lookup(amount + _amount(reply[3]) + floor)
        except ProviderError as exc:
            self._give_up(account_id, token, _failure_record(exc))
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
            _units(amount, "amount"),
            _units(floor, "floor"),
            hold_id,
            hold_us,
            _micros(ttl),
        )
        status = reply[0]
        if status in ("ok", "short"):
            return _admission(reply, status == "ok", "remote", hold_id, check)
        self._raise_for(status, reply)
        return None

    def _give_up(self, account_id: str, token: str, record: str) -> None:
        """Release the lookup lock, sharing the failure for a moment; never raises."""
        try:
            self._run(account_id, "fail", token, record, 1000)
        except LedgerError as exc:
            log.debug("could not release the lookup lock (it expires by itself): %s", exc)

    def _raise_for(self, status: str, reply: list[str]) -> None:
        if status == "recovering":
            raise LedgerError(
                "the ledger lost its state (Redis restarted without persistence, or was "
                "flushed); admissions pause until holds open before the loss have expired",
                ledger=self._where,
                retry_after=int(reply[5]) / 1e6,
            )
        if status == "failed":
            raise _rebuild_failure(reply[5])
        if status != "wait":
            raise LedgerError(f"unexpected answer from the ledger: {status!r}", ledger=self._where)

    def _run(self, account_id: str, op: str, *args: object) -> list[str]:
        keys = self.keys(account_id)
        argv = (op, self._epochs.get(account_id, ""), secrets.token_hex(8), self._pause, *args)
        with self._translate(op):
            try:
                raw = self._client.evalsha(SHA, len(keys), *keys, *argv)  # type: ignore[arg-type]
            except NoScriptError:
                self._client.script_load(SCRIPT)
                raw = self._client.evalsha(SHA, len(keys), *keys, *argv)  # type: ignore[arg-type]
        reply = [part.decode() if isinstance(part, bytes) else str(part) for part in raw]
        self._epochs[account_id] = reply[1]
        return reply

    @property
    def _pause(self) -> int:
        return _micros(self.max_hold_ttl)

    @contextlib.contextmanager
    def _translate(self, op: str) -> Iterator[None]:
        """Turn every redis-py error into a LedgerError, in this one place."""
        try:
            yield
        except RedisError as exc:
            detail = str(exc) or type(exc).__name__
            raise LedgerError(f"{op} failed: {detail}", ledger=self._where) from exc

    def _hold_id(self) -> str:
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


def _units(value: Decimal, name: str, *, rounding: str | None = None) -> int:
    """``value`` in units of :data:`SCALE`, exactly (or rounded as asked)."""
    scaled = value.scaleb(_PER_UNIT)
    whole = scaled.to_integral_value(rounding=rounding or ROUND_CEILING)
    if rounding is None and whole != scaled:
        raise ValueError(
            f"{name} {value} is finer than the Redis ledger counts: amounts are whole "
            f"multiples of {SCALE} of the unit"
        )
    if abs(whole) > _MAX_UNITS:
        raise ValueError(f"{name} {value} is more than the Redis ledger can count (9,000,000)")
    return int(whole)


def _balance_units(balance: Decimal) -> int:
    """A looked-up balance in units, rounded down and capped: never more than there is."""
    whole = int(balance.scaleb(_PER_UNIT).to_integral_value(rounding=ROUND_FLOOR))
    return max(-_MAX_UNITS, min(whole, _MAX_UNITS))


def _amount(units: str) -> Decimal:
    """Units back to an amount, without trailing zeros: ``500000000`` is ``0.5``."""
    value = Decimal(int(units)).scaleb(-_PER_UNIT).normalize()
    return value.quantize(_ONE) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def _micros(seconds: float) -> int:
    return int(min(seconds * 1e6, _MAX_MICROS))


def _positive_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _failure_record(exc: ProviderError) -> str:
    kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else "ProviderError"
    return json.dumps(
        {
            "type": kind,
            "message": exc.message,
            "provider": exc.provider,
            "status": exc.status,
            "code": exc.code,
        }
    )


def _rebuild_failure(record: str) -> ProviderError:
    """The error another process's lookup met, rebuilt from plain data (never unpickled)."""
    try:
        data = json.loads(record)
        cls = _ERRORS.get(data["type"], ProviderError)
        status = data.get("status")
        code = data.get("code")
        return cls(
            f"{data['message']} (met by another process's lookup)",
            provider=str(data["provider"]),
            status=status if isinstance(status, int) else None,
            code=code if isinstance(code, str) else None,
        )
    except (ValueError, KeyError, TypeError):
        return BalanceUnavailable("another process's lookup failed", provider="unknown")


def _describe(client: redis.Redis) -> str:
    """``redis://host:port/db`` (or ``unix://path``) without user or password."""
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
