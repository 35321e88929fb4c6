"""The guard: decide from a shared, TTL-bounded balance snapshot; hold while calls run."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import wrapt

from . import _batch
from ._batch import AsyncBatch, Batch, Forecast, ItemCost, MapResult
from ._check import Check, Source
from ._decision import Decision, Listener, Stats, listeners_of, notify
from ._errors import BalanceUnavailable, ConfigurationError, InsufficientCredits, ProviderError
from ._hold import Hold
from ._ledger import DEFAULT_LEDGER, Clock
from ._money import Amount, format_amount, to_amount
from ._provider import Provider

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._session import GuardedSession, RoutePrices
    from ._shared import SharedAccount

log = logging.getLogger("spendguard")

OnUnavailable = Literal["raise", "allow", "stale"]
"""What a guard does when the balance cannot be looked up: refuse, let the call through, or
decide from a recent balance (see ``SpendGuard(on_unavailable=...)``)."""
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
R = TypeVar("R")
Cost = Amount | Callable[..., Amount]
"""A fixed amount, or a callable receiving the guarded function's arguments and returning one."""

_POLICIES = ("raise", "allow", "stale")
_ZERO = Decimal(0)
_DEBUG = logging.DEBUG
_new_check = tuple.__new__
# How many ended calls may wait before their amounts move from held to spent.
_BACKLOG = 256

# The outcome of a decision, a plain tuple because it is made on the hot path:
# (admitted, available, source, age, sufficient, note). ``sufficient`` is None when no
# balance was known; ``note`` says why a refusal is not plain arithmetic ("budget",
# "remote"), or names the error class behind a fallback, or is "shadow".
_Outcome = tuple[bool, Decimal, Source, float | None, bool | None, str | None]


class SpendGuard:
    """Refuses expensive calls that the account cannot pay for, before they start.

    Args:
        provider: Where balances come from: :class:`Orthogonal`, :class:`Hyper3D` or any
            :class:`Provider`.
        ttl: Seconds a looked-up balance is trusted. While fresh, decisions make no
            network request at all.
        floor: An amount the guard always leaves untouched on the account.
        budget: A cap on what this guard may spend in total, whatever the account holds.
            Counted on settled amounts; a released hold gives its share back.
        on_unavailable: What to do when the balance cannot be had (timeout, connection
            error, 429, 5xx after retries). ``"raise"`` (default): the call does not run.
            ``"allow"``: the call runs, a WARNING is logged, and its cost is still held
            and debited. ``"stale"``: decide from the last known balance (minus holds and
            spending since) while it is at most ``max_stale`` seconds old, else raise.
            A bad key or a malformed answer always raises.
        refresh_interval: When the snapshot says "short" and is older than this many
            seconds, look again once before refusing, so a top-up is seen.
        clock: Monotonic seconds; ``time.monotonic`` by default. Guards share a snapshot
            and holds when they watch the same account through the same clock.
        max_stale: Seconds a balance may be old under ``on_unavailable="stale"``.
        enforce: ``False`` runs the guard in shadow mode: it never blocks, but logs and
            reports (``Decision.enforced is False``) every call it would have refused.
        on_decision: A callable, or several, receiving a :class:`Decision` after every
            decision. Exceptions they raise are logged, never propagated.
        name: The guard's name in logs and decisions; the provider's name by default.
        hold_ttl: Seconds after which a hold nobody ended (its owner vanished) expires:
            it stops blocking other calls and a WARNING names it. A batch renews its hold
            with every item done. ``None``: holds never expire.
        ledger: A shared :class:`Ledger`, such as :class:`spendguard.redis.RedisLedger`,
            where guards in many processes keep one account's snapshot, spending and
            holds, so that together they never admit more than it holds. ``None``
            (default): this process's own ledger. Budget and floor stay per guard.

    Raises:
        ConfigurationError: An option is out of range.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        ttl: float = 60.0,
        floor: Amount = 0,
        budget: Amount | None = None,
        on_unavailable: OnUnavailable = "raise",
        refresh_interval: float = 1.0,
        clock: Clock | None = None,
        max_stale: float = 300.0,
        enforce: bool = True,
        on_decision: Listener | Iterable[Listener] | None = None,
        name: str | None = None,
        hold_ttl: float | None = 300.0,
        ledger: Ledger | None = None,
    ) -> None:
        if not isinstance(provider, Provider):
            raise TypeError(
                f"provider must implement spendguard.Provider, got {type(provider).__name__}"
            )
        if on_unavailable not in _POLICIES:
            raise ConfigurationError(
                f"on_unavailable must be one of {', '.join(map(repr, _POLICIES))}, "
                f"got {on_unavailable!r}"
            )
        self._provider = provider
        self._unit = provider.unit
        self._name = provider.name
        self.name = name or provider.name
        self.max_stale = _seconds(max_stale, "max_stale")
        self.enforce = bool(enforce)
        self._listeners = listeners_of(on_decision)
        self.ttl = _seconds(ttl, "ttl")
        self.refresh_interval = _seconds(refresh_interval, "refresh_interval")
        self.hold_ttl = None if hold_ttl is None else _seconds(hold_ttl, "hold_ttl")
        if self.hold_ttl == 0:
            raise ConfigurationError("hold_ttl must be positive, or None: holds never expire")
        self.floor = _option_amount(floor, "floor")
        self.budget = None if budget is None else _option_amount(budget, "budget")
        self.on_unavailable: OnUnavailable = on_unavailable
        self._clock: Clock = clock or time.monotonic
        self._account = DEFAULT_LEDGER.account(provider.account_id, self._clock)
        self._lock = self._account.lock
        self._spent = _ZERO
        self._held = _ZERO
        self._hits = 0
        self._misses = 0
        self._refused = 0
        self._failed = 0
        self._lookups = 0
        self._fallbacks = 0
        self._errors: dict[str, int] = {}
        self._shared: SharedAccount | None = None
        if ledger is not None:
            from ._shared import attach

            self._shared = attach(self, ledger)
        # Only a guard with neither listeners nor a shared ledger may take the hot path.
        self._plain = self._shared is None and not self._listeners

    # -- public API ------------------------------------------------------------------

    @property
    def provider(self) -> Provider:
        """The provider this guard asks."""
        return self._provider

    @property
    def unit(self) -> str:
        """The provider's unit."""
        return self._unit

    @property
    def spent(self) -> Decimal:
        """What calls through this guard have spent (settled) so far."""
        self._account.settle_ended()
        return self._spent

    @property
    def held(self) -> Decimal:
        """What calls through this guard hold right now."""
        self._account.settle_ended()
        return self._held

    def __call__(self, *, cost: Cost) -> Callable[[F], F]:
        """Decorate a function so that it never starts when the account cannot pay ``cost``.

        Works on functions, methods, classmethods, staticmethods and ``async def``
        functions; name, docstring, signature and coroutine-ness are kept.

        Args:
            cost: A fixed amount (``int``, ``Decimal``, numeric ``str``, ``float``), or a
                callable called with exactly the arguments the function receives
                (``self`` or ``cls`` included) and returning one.

        Raises:
            InsufficientCredits: At call time, before the function starts.
            ProviderError: At call time, when the balance cannot be had and the policy
                is ``"raise"``.
        """
        if callable(cost):
            fixed = _ZERO
            cost_fn: Callable[..., Amount] | None = cost
        else:
            fixed, cost_fn = to_amount(cost, name="cost"), None

        def decorate(fn: F) -> F:
            target = getattr(fn, "__func__", fn)
            if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
                raise TypeError(
                    f"cannot guard generator function {target.__qualname__!r}: its body "
                    "runs after the call returns; use `with guard.spend(...)` inside it"
                )
            if inspect.isfunction(fn):
                return cast(F, self._guard_function(fn, fixed, cost_fn))
            if inspect.iscoroutinefunction(target):
                wrapper = self._async_wrapper(fixed, cost_fn)
            else:
                wrapper = self._sync_wrapper(fixed, cost_fn)
            return cast(F, wrapt.FunctionWrapper(fn, wrapper))

        return decorate

    def spend(self, amount: Amount, *, label: str | None = None) -> Spend:
        """Hold ``amount`` around a block of work: ``with`` or ``async with``.

        Yields a :class:`Hold`. Leaving the block settles the hold in full unless it was
        settled or released inside. ``label`` names the hold in :meth:`holds` and in the
        warning if it expires.

        Raises:
            ValueError: ``amount`` is negative, NaN or infinite.
        """
        return Spend(self, to_amount(amount), label)

    def check(self, amount: Amount) -> Check:
        """Whether ``amount`` can be spent now; never raises for a shortfall.

        Raises:
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
        """
        required = to_amount(amount)
        if self._plain and self.budget is None:
            # The cached answer, inlined: the reading _from_cache makes.
            now = self._clock()
            account = self._account
            if now < account.next_expiry:
                age = None
                with self._lock:
                    fetched_at = account.fetched_at
                    if fetched_at is not None and now - fetched_at <= self.ttl:
                        available = account.limit - account.held  # type: ignore[operator]
                        if self.floor:
                            available -= self.floor
                        if available >= required:
                            self._hits += 1
                            age = now - fetched_at
                if age is not None:
                    return _new_check(
                        Check, (True, required, available, _ZERO, self._unit, "cache", age)
                    )
        return self._to_check(required, self._decide(required, hold=False, blocking=False))

    async def acheck(self, amount: Amount) -> Check:
        """:meth:`check` for coroutines: a lookup runs in a worker thread."""
        required = to_amount(amount)
        return self._to_check(required, await self._adecide(required, hold=False, blocking=False))

    def require(self, amount: Amount) -> Check:
        """Like :meth:`check`, but raises :class:`InsufficientCredits` for a shortfall."""
        required = to_amount(amount)
        outcome = self._decide(required, hold=False)
        if not outcome[0]:
            raise self._refusal(required, outcome)
        return self._to_check(required, outcome)

    async def arequire(self, amount: Amount) -> Check:
        """:meth:`require` for coroutines."""
        required = to_amount(amount)
        outcome = await self._adecide(required, hold=False)
        if not outcome[0]:
            raise self._refusal(required, outcome)
        return self._to_check(required, outcome)

    @property
    def stats(self) -> Stats:
        """A snapshot of this guard's counters."""
        with self._lock:
            decisions = self._hits + self._misses
            return Stats(
                decisions=decisions,
                admitted=decisions - self._refused - self._failed,
                refused=self._refused,
                cache_hits=self._hits,
                lookups=self._lookups,
                fallbacks=self._fallbacks,
                errors=dict(self._errors),
            )

    def balance(self) -> Decimal:
        """The account balance as this guard sees it: the cached snapshot minus spending
        since, looked up when stale. Holds and the floor are not subtracted."""
        if self._shared is not None and (shared := self._shared.balance()) is not None:
            return shared
        self._ensure_fresh()
        return self._balance_now()

    async def abalance(self) -> Decimal:
        """:meth:`balance` for coroutines."""
        if self._shared is not None and (shared := await self._shared.abalance()) is not None:
            return shared
        await asyncio.to_thread(self._ensure_fresh)
        return self._balance_now()

    def available(self) -> Decimal:
        """What this guard could spend now: balance minus holds and floor, within budget."""
        if self._shared is not None and (shared := self._shared.available()) is not None:
            return shared
        self._ensure_fresh()
        with self._lock:
            return self._available_locked()

    async def aavailable(self) -> Decimal:
        """:meth:`available` for coroutines."""
        if self._shared is not None and (shared := await self._shared.aavailable()) is not None:
            return shared
        await asyncio.to_thread(self._ensure_fresh)
        with self._lock:
            return self._available_locked()

    def invalidate(self) -> None:
        """Drop the cached balance of this account (for every guard on it, and with a
        shared ledger for every process)."""
        if self._shared is not None:
            self._shared.invalidate()
        self._account.invalidate()

    def session(
        self, prices: RoutePrices | None = None, *, max_cost: Amount | None = None
    ) -> GuardedSession:
        """A ``requests.Session`` whose billable requests this guard prices and holds.

        Shorthand for ``GuardedSession(guard, prices, max_cost=max_cost)``; see
        :class:`~spendguard.GuardedAdapter` for the pricing rules.

        Args:
            prices: ``"METHOD /path"`` (or a glob, or a whole URL) to an amount, a callable
                of the ``PreparedRequest``, or ``None`` for free.
            max_cost: What to hold for a request whose price is dynamic.

        Raises:
            ConfigurationError: A price key or amount is malformed.
        """
        from ._session import GuardedSession

        return GuardedSession(self, prices, max_cost=max_cost)

    def __repr__(self) -> str:
        budget = "None" if self.budget is None else repr(str(self.budget))
        return (
            f"SpendGuard({self._provider!r}, ttl={self.ttl!r}, floor={str(self.floor)!r}, "
            f"budget={budget}, on_unavailable={self.on_unavailable!r})"
        )

    # -- batches ---------------------------------------------------------------------

    def batch(
        self,
        items: Iterable[T],
        cost: ItemCost[T],
        *,
        partial: bool = False,
        progress: bool = False,
        label: str | None = None,
    ) -> Batch[T]:
        """Hold what a whole batch costs before its first item, then hand the items out.

        ``items`` is read into a list once, to price every item (``cost`` is called once
        per item, in order). One decision then holds the total: at most one balance
        lookup, however many items. Iterate the returned :class:`Batch` with ``for``;
        each item counts as spent when the loop asks for the next one or the batch ends,
        and items never reached are released (see :class:`Batch`).

        Args:
            items: The work, one item per paid call.
            cost: What one item costs: a fixed amount, or a callable of the item.
            partial: Hold and hand out the longest prefix that fits instead of refusing;
                ``Batch.skipped`` lists the rest.
            progress: Show a tqdm progress bar: items done, spent, still held, available.
            label: Names the batch's hold in :meth:`holds`; "batch of N items" by default.

        Raises:
            InsufficientCredits: The total does not fit (``partial=False``); its
                ``affordable`` says how many first items would. Nothing is held.
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
            TypeError, ValueError: An item's cost is not a valid amount; ``items`` is an
                async iterable (use :meth:`abatch`).
            ImportError: ``progress=True`` without tqdm installed.
        """
        return _batch.start_batch(
            self, items, cost, partial=partial, progress=progress, label=label
        )

    def abatch(
        self,
        items: Iterable[T] | AsyncIterable[T],
        cost: ItemCost[T],
        *,
        partial: bool = False,
        progress: bool = False,
        label: str | None = None,
    ) -> AsyncBatch[T]:
        """:meth:`batch` for coroutines, over an iterable or an async iterable.

        Nothing is read, priced or held until ``async with`` or the first step of
        ``async for``; that step raises what :meth:`batch` raises. The lookup runs in a
        worker thread.

        Raises:
            TypeError, ValueError: A fixed ``cost`` is not a valid amount.
            ImportError: ``progress=True`` without tqdm installed.
        """
        return _batch.start_abatch(
            self, items, cost, partial=partial, progress=progress, label=label
        )

    def forecast(self, items: Iterable[T], cost: ItemCost[T]) -> Forecast:
        """Price a batch and say how much of it fits now, holding nothing.

        A dry run to print before starting a job. It may look the balance up once.

        Raises:
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
            TypeError, ValueError: An item's cost is not a valid amount.
        """
        _, costs = _batch.price_all(items, cost)
        total = sum(costs, _ZERO)
        return _batch.forecast(self, costs, self._decide(total, hold=False, blocking=False))

    async def aforecast(self, items: Iterable[T] | AsyncIterable[T], cost: ItemCost[T]) -> Forecast:
        """:meth:`forecast` for coroutines, over an iterable or an async iterable."""
        price = _batch.pricer(cost)
        costs = [price(item) for item in await _batch.read_items(items)]
        total = sum(costs, _ZERO)
        outcome = await self._adecide(total, hold=False, blocking=False)
        return _batch.forecast(self, costs, outcome)

    def map(
        self, fn: Callable[[T], R], items: Iterable[T], *, cost: ItemCost[T], workers: int = 8
    ) -> MapResult[T, R]:
        """Run ``fn`` over ``items`` in a thread pool, admitting only what the balance covers.

        Items are admitted one at a time, in order, each holding its cost while it runs,
        so no more run at once than ``workers`` and the balance allow. An item that does
        not fit is not run and is reported in ``MapResult.refused``; later items are
        still tried. ``items`` is read lazily.

        Raises:
            Exception: The first exception ``fn`` raised, in the items' order, once the
                items already running have finished; no further item is started after it.
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
            ConfigurationError: ``workers`` is not a positive integer.
        """
        return _batch.map_items(self, fn, items, cost, workers)

    async def amap(
        self,
        fn: Callable[[T], Awaitable[R]],
        items: Iterable[T] | AsyncIterable[T],
        *,
        cost: ItemCost[T],
        workers: int = 8,
    ) -> MapResult[T, R]:
        """:meth:`map` for coroutine functions: at most ``workers`` tasks at once.

        If ``amap`` itself is cancelled, the running tasks are cancelled too, and every
        hold ends before the cancellation propagates.
        """
        return await _batch.amap_items(self, fn, items, cost, workers)

    def holds(self) -> list[Hold]:
        """The holds open now on this guard's account, oldest first, whichever guard took
        them: for finding what a stuck pipeline is waiting on.

        Expired holds are reported (a WARNING) and left out. Decorated calls hold credit
        too, but are not listed: they always end when the call returns or raises.
        """
        self._expire_holds(self._clock())
        with self._lock:
            return list(self._account.holds)

    def _expire_holds(self, now: float) -> None:
        for hold, age in self._account.expire(now):
            label = "" if hold.label is None else f" {hold.label!r}"
            log.warning(
                "%s: hold%s of %s expired after %.1fs without being settled or released; "
                "it no longer blocks other calls (hold_ttl=%s)",
                self.name,
                label,
                format_amount(hold.amount, self._unit),
                age,
                hold._ttl,
            )

    # -- decisions -------------------------------------------------------------------

    def _decide(self, amount: Decimal, hold: bool, blocking: bool = True) -> _Outcome:
        if self._shared is not None and (shared := self._shared.decide(amount, hold, blocking)):
            return shared
        cached = self._from_cache(amount, hold)
        if type(cached) is tuple:
            if cached[0] and not self._listeners:
                return cached
            return self._conclude(amount, hold, blocking, cached)
        assert type(cached) is int
        try:
            check = self._account.refresh(
                self._provider.check, amount + self.floor, cached, self._clock
            )
        except ProviderError as exc:
            return self._conclude(amount, hold, blocking, self._on_error(amount, hold, exc))
        return self._conclude(amount, hold, blocking, self._after_lookup(amount, hold, check))

    async def _adecide(self, amount: Decimal, hold: bool, blocking: bool = True) -> _Outcome:
        if self._shared is not None and (
            shared := await self._shared.adecide(amount, hold, blocking)
        ):
            return shared
        cached = self._from_cache(amount, hold)
        if type(cached) is tuple:
            if cached[0] and not self._listeners:
                return cached
            return self._conclude(amount, hold, blocking, cached)
        assert type(cached) is int
        # The lookup (and its single-flight wait) blocks, so it runs in a worker thread;
        # the hold itself is taken back on the event loop, so a cancelled task holds nothing.
        try:
            check = await asyncio.to_thread(
                self._account.refresh,
                self._provider.check,
                amount + self.floor,
                cached,
                self._clock,
            )
        except ProviderError as exc:
            return self._conclude(amount, hold, blocking, self._on_error(amount, hold, exc))
        return self._conclude(amount, hold, blocking, self._after_lookup(amount, hold, check))

    def _take_cached(self, amount: Decimal) -> bool:
        """Hold ``amount`` when a fresh snapshot covers it and nothing else must happen.

        The guarded call's hot path, one lock section (decorated functions inline it).
        ``False`` sends the caller down the full decision (lookups, refusals, listeners,
        shared ledgers).
        """
        now = self._clock()
        account = self._account
        if not self._plain or now >= account.next_expiry:
            return False
        # `with` and no call inside (hence no min()): a thread cannot lose the GIL while
        # it holds the lock, which keeps threads from queueing behind a preempted holder.
        with self._lock:
            fetched_at = account.fetched_at
            if fetched_at is None or now - fetched_at > self.ttl:
                return False
            available = account.limit - account.held  # type: ignore[operator]
            if self.floor:
                available -= self.floor
            if available < amount or (
                self.budget is not None and self.budget - self._spent - self._held < amount
            ):
                return False
            account.held += amount
            self._held += amount
            self._hits += 1
            return True

    def _from_cache(self, amount: Decimal, hold: bool) -> _Outcome | int:
        """Decide from a fresh snapshot, or return the lookup count a lookup starts from."""
        now = self._clock()
        account = self._account
        if now >= account.next_expiry:
            self._expire_holds(now)
        with self._lock:
            fetched_at = account.fetched_at
            if fetched_at is not None and now - fetched_at <= self.ttl:
                available = account.limit - account.held  # type: ignore[operator]
                if self.floor:
                    available -= self.floor
                if self.budget is not None:
                    available = min(available, self.budget - self._spent - self._held)
                if available >= amount:
                    if hold:
                        account.held += amount
                        self._held += amount
                    self._hits += 1
                    return (True, available, "cache", now - fetched_at, True, None)
                if self.budget is not None and self.budget - self._spent - self._held < amount:
                    self._hits += 1
                    return (False, available, "cache", now - fetched_at, False, "budget")
                if now - fetched_at < self.refresh_interval:
                    self._hits += 1
                    return (False, available, "cache", now - fetched_at, False, None)
            elif self.budget is not None and self.budget - self._spent - self._held < amount:
                self._hits += 1
                left = self.budget - self._spent - self._held
                return (False, left, "cache", None, False, "budget")
            self._misses += 1
            return account.lookups

    def _after_lookup(self, amount: Decimal, hold: bool, check: Check | None) -> _Outcome:
        with self._lock:
            if check is not None:
                self._lookups += 1
            available = self._available_locked()
            age = self._age_locked()
            if available >= amount and (check is None or check.sufficient):
                if hold:
                    self._account.held += amount
                    self._held += amount
                return (True, available, "remote", age, True, None)
        note = None if available < amount else "remote"
        return (False, available, "remote", age, False, note)

    def _on_error(self, amount: Decimal, hold: bool, exc: ProviderError) -> _Outcome:
        """Apply the failure policy (and shadow mode) to a lookup that failed."""
        policy = self.on_unavailable
        transient = isinstance(exc, BalanceUnavailable)
        kind = type(exc).__name__
        with self._lock:
            self._lookups += 1
            self._errors[kind] = self._errors.get(kind, 0) + 1
            age = self._age_locked()
            known = self._account.balance is not None
            available = self._available_locked() if known else _ZERO
            stale = transient and policy == "stale" and age is not None and age <= self.max_stale
            if stale:
                self._fallbacks += 1
                admitted = available >= amount
                if admitted and hold:
                    self._account.held += amount
                    self._held += amount
            elif not ((transient and policy == "allow") or not self.enforce):
                self._failed += 1
                raise exc
            else:
                self._fallbacks += 1
                if hold:
                    self._account.held += amount
                    self._held += amount
        if stale:
            log.warning(
                "%s: balance unavailable (%s); deciding from the balance of %.1fs ago "
                "(on_unavailable='stale')",
                self.name,
                exc.message,
                age,
            )
            return (admitted, available, "fallback", age, admitted, kind)
        log.warning(
            "%s: balance unavailable (%s); letting %s through (%s)",
            self.name,
            exc.message,
            format_amount(amount, self._unit),
            "on_unavailable='allow'" if transient and policy == "allow" else "enforce=False",
        )
        return (True, available, "fallback", age, None, kind)

    def _conclude(self, amount: Decimal, hold: bool, blocking: bool, outcome: _Outcome) -> _Outcome:
        """Count and report a decision; in shadow mode turn a refusal into a pass."""
        admitted, available, source, age, sufficient, note = outcome
        if not admitted:
            shortfall = format_amount(amount - available, self._unit, bare=True)
            with self._lock:
                self._refused += 1
                if blocking and not self.enforce and hold:
                    self._account.held += amount
                    self._held += amount
            if blocking and not self.enforce:
                log.warning(
                    "%s: would refuse %s (short by %s) but enforce=False; letting it through",
                    self.name,
                    format_amount(amount, self._unit),
                    shortfall,
                )
                outcome = (True, available, source, age, sufficient, "shadow")
            else:
                log.info(
                    "%s: refused %s, %s available, short by %s [%s]",
                    self.name,
                    format_amount(amount, self._unit),
                    format_amount(available, self._unit, bare=True),
                    shortfall,
                    note or source,
                )
        elif log.isEnabledFor(_DEBUG):
            log.debug(
                "%s: admitted %s from %s (%s available)",
                self.name,
                format_amount(amount, self._unit),
                source,
                format_amount(available, self._unit, bare=True),
            )
        if self._listeners:
            notify(self._listeners, self._decision(amount, outcome))
        return outcome

    def _decision(self, amount: Decimal, outcome: _Outcome) -> Decision:
        admitted, available, source, age, sufficient, note = outcome
        shortfall = max(amount - available, _ZERO) if sufficient is False else _ZERO
        return Decision(
            allowed=admitted,
            sufficient=sufficient,
            required=amount,
            available=available,
            shortfall=shortfall,
            source=source,
            age=age,
            provider=self._name,
            guard=self.name,
            unit=self._unit,
            enforced=note != "shadow",
            error=note if source == "fallback" else None,
        )

    def _available_locked(self) -> Decimal:
        account = self._account
        limit = account.limit if account.limit is not None else -account.spent
        available = limit - account.held - self.floor
        if self.budget is not None:
            available = min(available, self.budget - self._spent - self._held)
        return available

    def _age_locked(self) -> float | None:
        balance_at = self._account.balance_at
        return None if balance_at is None else max(self._clock() - balance_at, 0.0)

    def _balance_now(self) -> Decimal:
        self._account.settle_ended()
        with self._lock:
            account = self._account
            return account.limit if account.limit is not None else -account.spent

    def _ensure_fresh(self) -> None:
        now = self._clock()
        account = self._account
        if now >= account.next_expiry:
            self._expire_holds(now)
        with self._lock:
            fetched_at = account.fetched_at
            if fetched_at is not None and now - fetched_at <= self.ttl:
                return
            seen = account.lookups
        check = account.refresh(self._provider.check, self.floor, seen, self._clock)
        if check is not None:
            with self._lock:
                self._lookups += 1
        if log.isEnabledFor(_DEBUG) and check is not None:
            log.debug("%s: looked up %s", self.name, check)

    def _to_check(self, required: Decimal, outcome: _Outcome) -> Check:
        _, available, source, age, sufficient, _ = outcome
        if sufficient is None:
            return Check(True, required, available, _ZERO, self._unit, source, age)
        if sufficient:
            return Check(True, required, available, _ZERO, self._unit, source, age)
        shortfall = max(required - available, _ZERO)
        return Check(False, required, available, shortfall, self._unit, source, age)

    def _refusal(self, amount: Decimal, outcome: _Outcome) -> InsufficientCredits:
        note = outcome[5]
        reason = None
        if note == "budget":
            reason = f"budget of {format_amount(self.budget or _ZERO, self._unit)} for this guard"
        elif note == "remote":
            reason = "the provider reported the balance insufficient"
        return InsufficientCredits(
            required=amount,
            available=outcome[1],
            unit=self._unit,
            provider=self._name,
            reason=reason,
        )

    # -- holds -----------------------------------------------------------------------

    def _finish(self, amount: Decimal) -> None:
        """A decorated call holding ``amount`` ended, and spent it (whether it raised or not).

        The amount moves from held to spent later, in bulk (see ``Account.ended``): a
        decorated call takes one lock section, not two.
        """
        if self._shared is not None:
            self._shared.finish(amount, amount)
        account = self._account
        ended = account.ended
        ended.append((self, amount))
        if len(ended) > _BACKLOG:
            account.settle_ended(wait=False)

    def _end_hold(self, hold: Hold, charged: Decimal | None) -> None:
        if self._shared is not None:
            self._shared.end_hold(hold, charged)
        hold._end(charged)

    def _after_call(self, exc: BaseException | None) -> None:
        if exc is not None and _payment_required(exc):
            log.warning("%s: the provider answered 402; the cached balance is dropped", self._name)
            self.invalidate()

    # -- wrappers --------------------------------------------------------------------

    def _price(
        self,
        cost_fn: Callable[..., Amount],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Decimal:
        value = (
            cost_fn(instance, *args, **kwargs) if instance is not None else cost_fn(*args, **kwargs)
        )
        return to_amount(value, name="cost")

    def _admit(self, amount: Decimal) -> None:
        """Hold ``amount`` through a full decision, or raise why not."""
        outcome = self._decide(amount, hold=True)
        if not outcome[0]:
            raise self._refusal(amount, outcome)

    async def _aadmit(self, amount: Decimal) -> None:
        """:meth:`_admit` for coroutines."""
        outcome = await self._adecide(amount, hold=True)
        if not outcome[0]:
            raise self._refusal(amount, outcome)

    def _guard_function(
        self, fn: Callable[..., Any], fixed: Decimal, cost_fn: Callable[..., Amount] | None
    ) -> Callable[..., Any]:
        """A plain function's guarded twin: a closure, the cheapest call Python makes.

        Called through a class it binds like any function, so a method's ``self`` reaches
        the cost callable as its first argument.

        The closure inlines :meth:`_take_cached` and :meth:`_finish`, whose calls would
        be a quarter of its cost; keep the three in step.
        """
        if inspect.iscoroutinefunction(fn):
            return self._guard_coroutine(fn, fixed, cost_fn)
        price, finish, after_call = self._price, self._finish, self._after_call
        clock, lock, plain, account = self._clock, self._lock, self._plain, self._account
        ended, settle = account.ended, account.settle_ended
        record = None if self._shared is not None else ended.append
        admit = self._admit
        fixed_entry = (self, fixed)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if cost_fn is None:
                amount, entry = fixed, fixed_entry
            else:
                amount = price(cost_fn, None, args, kwargs)
                entry = (self, amount)
            now = clock()
            taken = False
            # The finally clause owns the hold from the moment it is taken, inside the lock
            # section where no signal is handled: a KeyboardInterrupt cannot strand it.
            try:
                if plain and now < account.next_expiry:
                    with lock:
                        fetched_at = account.fetched_at
                        if fetched_at is not None and now - fetched_at <= self.ttl:
                            available = account.limit - account.held  # type: ignore[operator]
                            if self.floor:
                                available -= self.floor
                            if available >= amount and (
                                self.budget is None
                                or self.budget - self._spent - self._held >= amount
                            ):
                                account.held += amount
                                self._held += amount
                                self._hits += 1
                                taken = True
                if not taken:
                    admit(amount)
                    taken = True
                return fn(*args, **kwargs)
            except BaseException as exc:
                if taken:
                    after_call(exc)
                raise
            finally:
                if taken:
                    if record is None:
                        finish(amount)
                    else:
                        record(entry)
                        if len(ended) > _BACKLOG:
                            settle(False)

        return guarded

    def _guard_coroutine(
        self, fn: Callable[..., Any], fixed: Decimal, cost_fn: Callable[..., Amount] | None
    ) -> Callable[..., Any]:
        """:meth:`_guard_function` for a coroutine function."""
        price, finish, after_call = self._price, self._finish, self._after_call
        clock, lock, plain, account = self._clock, self._lock, self._plain, self._account
        ended, settle = account.ended, account.settle_ended
        record = None if self._shared is not None else ended.append
        aadmit = self._aadmit
        fixed_entry = (self, fixed)

        @functools.wraps(fn)
        async def guarded_coroutine(*args: Any, **kwargs: Any) -> Any:
            if cost_fn is None:
                amount, entry = fixed, fixed_entry
            else:
                amount = price(cost_fn, None, args, kwargs)
                entry = (self, amount)
            now = clock()
            taken = False
            try:  # as in _guard_function
                if plain and now < account.next_expiry:
                    with lock:
                        fetched_at = account.fetched_at
                        if fetched_at is not None and now - fetched_at <= self.ttl:
                            available = account.limit - account.held  # type: ignore[operator]
                            if self.floor:
                                available -= self.floor
                            if available >= amount and (
                                self.budget is None
                                or self.budget - self._spent - self._held >= amount
                            ):
                                account.held += amount
                                self._held += amount
                                self._hits += 1
                                taken = True
                if not taken:
                    await aadmit(amount)
                    taken = True
                return await fn(*args, **kwargs)
            except BaseException as exc:
                if taken:
                    after_call(exc)
                raise
            finally:
                if taken:
                    if record is None:
                        finish(amount)
                    else:
                        record(entry)
                        if len(ended) > _BACKLOG:
                            settle(False)

        return guarded_coroutine

    def _sync_wrapper(
        self, fixed: Decimal, cost_fn: Callable[..., Amount] | None
    ) -> Callable[..., Any]:
        """A wrapt wrapper for what is not a plain function (classmethod, staticmethod...)."""

        def wrapper(
            wrapped: Callable[..., Any],
            instance: object,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            amount = fixed if cost_fn is None else self._price(cost_fn, instance, args, kwargs)
            if not self._take_cached(amount):
                self._admit(amount)
            try:
                return wrapped(*args, **kwargs)
            except BaseException as exc:
                self._after_call(exc)
                raise
            finally:
                self._finish(amount)

        return wrapper

    def _async_wrapper(
        self, fixed: Decimal, cost_fn: Callable[..., Amount] | None
    ) -> Callable[..., Any]:
        """:meth:`_sync_wrapper` for coroutine functions."""

        async def wrapper(
            wrapped: Callable[..., Any],
            instance: object,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            amount = fixed if cost_fn is None else self._price(cost_fn, instance, args, kwargs)
            if not self._take_cached(amount):
                await self._aadmit(amount)
            try:
                return await wrapped(*args, **kwargs)
            except BaseException as exc:
                self._after_call(exc)
                raise
            finally:
                self._finish(amount)

        return wrapper


class Spend:
    """The context manager returned by :meth:`SpendGuard.spend` (``with`` and ``async with``)."""

    __slots__ = ("_guard", "_hold", "amount", "label")

    def __init__(self, guard: SpendGuard, amount: Decimal, label: str | None = None) -> None:
        self._guard = guard
        self.amount = amount
        self.label = label
        self._hold: Hold | None = None

    def __enter__(self) -> Hold:
        self._check_idle()
        self._guard._admit(self.amount)
        self._hold = Hold(self._guard, self.amount, label=self.label)
        return self._hold

    async def __aenter__(self) -> Hold:
        self._check_idle()
        await self._guard._aadmit(self.amount)
        self._hold = Hold(self._guard, self.amount, label=self.label)
        return self._hold

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hold, self._hold = self._hold, None
        self._guard._after_call(exc)
        if hold is not None:
            hold.settle()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: bookkeeping that cannot be interrupted by cancellation.
        self.__exit__(exc_type, exc, tb)

    def _check_idle(self) -> None:
        if self._hold is not None:
            raise RuntimeError("this spend() block is already active; call guard.spend() again")

    def __repr__(self) -> str:
        return f"<Spend {format_amount(self.amount, self._guard.unit)}>"


def _payment_required(exc: BaseException) -> bool:
    """Whether ``exc`` is an HTTP 402 (``requests.HTTPError`` or anything with a response)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 402


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _option_amount(value: Amount, name: str) -> Decimal:
    try:
        return to_amount(value, name=name)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
