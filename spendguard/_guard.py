"""The guard: options, validation and the public methods, over one engine (``_engine``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _batch, _map
from ._account import ACCOUNTS, Clock, Tally
from ._batch import AsyncBatch, Batch, Forecast, ItemCost
from ._check import Check
from ._decision import Listener, Stats, listeners_of
from ._decorate import decorate
from ._engine import Engine, priced, to_atoms
from ._errors import ConfigurationError
from ._hold import Hold
from ._map import MapResult
from ._money import Amount, format_amount, from_atoms, to_amount
from ._policy import OnUnavailable
from ._provider import Provider
from ._spend import Spend, settle_abandoned

if TYPE_CHECKING:
    import httpx

    from ._ledger import Ledger
    from ._session import GuardedSession, RoutePrices
    from .pricing import RodinPrices

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
R = TypeVar("R")
Cost = Amount | Callable[..., Amount]
"""A fixed amount, or a callable receiving the guarded function's arguments and returning one."""

_POLICIES = ("raise", "allow", "stale")
_ZERO = Decimal(0)
_new_check = tuple.__new__


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
        clock: Monotonic seconds; ``time.monotonic`` by default. Guards on one account
            share its snapshot and holds, so they must share one clock.
        max_stale: Seconds a balance may be old under ``on_unavailable="stale"``.
        enforce: ``False`` runs the guard in shadow mode: it never blocks, but logs and
            reports (``Decision.enforced is False``) every call it would have refused.
        on_decision: A callable, or several, receiving a :class:`Decision` after every
            decision. Exceptions they raise are logged, never propagated.
        name: The guard's name in logs and decisions; the provider's name by default.
        hold_ttl: Seconds after which a hold nobody ended (its owner vanished) expires:
            it stops blocking other calls and a WARNING names it. A batch renews its hold
            with every item done; a decorated call's hold never expires (the call always
            ends it). ``None``: holds never expire.
        ledger: A shared :class:`Ledger`: :class:`spendguard.sqlite.SQLiteLedger` for the
            processes of one machine, :class:`spendguard.redis.RedisLedger` for many,
            where guards in many processes keep one account's snapshot, spending and
            holds, so that together they never admit more than it holds. ``None``
            (default): this process's own ledger. Budget and floor stay per guard.

    Raises:
        ConfigurationError: An option is out of range, or another guard watches the same
            account through a different clock.
        TypeError: ``provider`` is not a provider (a provider class, say, not an instance).
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
        if isinstance(provider, type):
            raise TypeError(
                f"provider must be an instance: pass {provider.__name__}(...), "
                f"not the class {provider.__name__}"
            )
        if not isinstance(provider, Provider):
            raise TypeError(
                f"provider must implement spendguard.Provider, got {type(provider).__name__}"
            )
        if on_unavailable not in _POLICIES:
            raise ConfigurationError(
                f"on_unavailable must be one of {', '.join(map(repr, _POLICIES))}, "
                f"got {on_unavailable!r}"
            )
        if hold_ttl is not None and _seconds(hold_ttl, "hold_ttl") == 0:
            raise ConfigurationError("hold_ttl must be positive, or None: holds never expire")
        self._provider = provider
        self._spends: dict[object, Spend] = {}
        self._labelled: dict[str, dict[object, Spend]] = {}
        self._floor = _option_amount(floor, "floor")
        self._budget = None if budget is None else _option_amount(budget, "budget")
        fleet = None
        if ledger is not None:
            from ._fleet import Fleet

            fleet = Fleet(ledger, provider.account_id, name or provider.name)
        self._engine = Engine(
            provider,
            ACCOUNTS.account(provider.account_id, clock or time.monotonic),
            Tally(None if self._budget is None else to_atoms(self._budget)),
            name=name or provider.name,
            ttl=_seconds(ttl, "ttl"),
            floor=to_atoms(self._floor),
            refresh_interval=_seconds(refresh_interval, "refresh_interval"),
            max_stale=_seconds(max_stale, "max_stale"),
            on_unavailable=on_unavailable,
            enforce=bool(enforce),
            listeners=listeners_of(on_decision),
            hold_ttl=None if hold_ttl is None else float(hold_ttl),
            fleet=fleet,
        )

    # -- options -----------------------------------------------------------------------

    @property
    def provider(self) -> Provider:
        """The provider this guard asks."""
        return self._provider

    @property
    def unit(self) -> str:
        """The provider's unit."""
        return self._engine.unit

    @property
    def name(self) -> str:
        """The guard's name in logs and decisions."""
        return self._engine.name

    @property
    def ttl(self) -> float:
        """Seconds a looked-up balance is trusted."""
        return self._engine.ttl

    @property
    def floor(self) -> Decimal:
        """What the guard always leaves untouched on the account."""
        return self._floor

    @property
    def budget(self) -> Decimal | None:
        """The cap on what this guard may spend in total (``None``: no cap)."""
        return self._budget

    @property
    def on_unavailable(self) -> OnUnavailable:
        """What the guard does when the balance cannot be had."""
        return self._engine.on_unavailable

    @property
    def refresh_interval(self) -> float:
        """Seconds after which a "short" snapshot is looked up again before refusing."""
        return self._engine.refresh_interval

    @property
    def max_stale(self) -> float:
        """Seconds a balance may be old under ``on_unavailable="stale"``."""
        return self._engine.max_stale

    @property
    def enforce(self) -> bool:
        """``False`` in shadow mode."""
        return self._engine.enforce

    @property
    def hold_ttl(self) -> float | None:
        """Seconds after which a hold nobody ended expires (``None``: never)."""
        ttl = self._engine.hold_ttl
        return None if ttl == float("inf") else ttl

    # -- totals ------------------------------------------------------------------------

    @property
    def spent(self) -> Decimal:
        """What calls through this guard have spent (settled) so far."""
        settle_abandoned(self._engine.account)
        self._engine.settle()
        return from_atoms(self._engine.tally.spent)

    @property
    def held(self) -> Decimal:
        """What calls through this guard hold right now."""
        settle_abandoned(self._engine.account)
        self._engine.settle()
        return from_atoms(self._engine.tally.held)

    @property
    def stats(self) -> Stats:
        """A snapshot of this guard's counters."""
        return self._engine.stats()

    # -- the faces ---------------------------------------------------------------------

    @overload
    def __call__(self, fn: None = None, /, *, cost: Cost) -> Callable[[F], F]: ...

    @overload
    def __call__(self, fn: Callable[..., Any], /) -> Any: ...

    def __call__(self, fn: Callable[..., Any] | None = None, /, *, cost: Cost | None = None) -> Any:
        """Decorate a function so that it never starts when the account cannot pay ``cost``.

        Works on functions, methods, classmethods, staticmethods, ``async def`` functions,
        objects whose ``__call__`` is ``async def`` and ``functools.partial`` of either;
        name, docstring, signature and coroutine-ness are kept, and a guarded function
        pickles as its undecorated twin does (by reference). Inside the call,
        :func:`spendguard.current_hold` returns its :class:`Hold`.

        A call that raises an exception carrying an HTTP 402 response releases its hold
        (the provider charged nothing) and drops the cached balance; any other exception
        counts the call as charged, in full.

        Args:
            cost: A fixed amount (``int``, ``Decimal``, numeric ``str``, ``float``), or a
                callable called with exactly the arguments the function receives
                (``self`` or ``cls`` included) and returning one.

        Raises:
            TypeError: ``@guard`` without ``(cost=...)``, or a generator function.
            ValueError: A fixed ``cost`` is negative, NaN or infinite.
            InsufficientCredits: At call time, before the function starts.
            ProviderError: At call time, when the balance cannot be had and the policy
                is ``"raise"``.
        """
        if fn is not None or cost is None:
            raise TypeError(
                "a guard decorates with a cost: write @guard(cost=...) above the function, "
                "not @guard"
            )
        engine = self._engine
        chosen: Cost = cost if callable(cost) else to_amount(cost, name="cost")

        def decorator(fn: F) -> F:
            return decorate(engine, fn, chosen)  # type: ignore[no-any-return]

        return decorator

    def spend(self, amount: Amount, *, label: str | None = None) -> Spend:
        """Hold ``amount`` around a block of work: ``with`` or ``async with``.

        Yields a :class:`Hold`. Leaving the block settles the hold in full unless it was
        settled or released inside, or the block raised an exception carrying an HTTP 402
        response (then it is released). ``label`` names the hold in :meth:`holds` and in
        the warning if it expires. One ``Spend`` may be entered again, and by several
        threads or tasks at once: each entry holds anew.

        Raises:
            ValueError: ``amount`` is negative, NaN or infinite.
        """
        kind = type(amount)
        if kind is int or kind is str:  # recurring amounts: one Spend each (it is reentrant)
            spends = self._spends if label is None else self._labelled.get(label)
            block = None if spends is None else spends.get(amount)
            if block is None:
                block = Spend(self._engine, *priced(amount), label)
                if spends is None and len(self._labelled) < 256:
                    spends = self._labelled[label] = {}  # type: ignore[index]
                if spends is not None and len(spends) < 256:
                    spends[amount] = block
            return block
        return Spend(self._engine, *priced(amount), label)

    def check(self, amount: Amount) -> Check:
        """Whether ``amount`` can be spent now; never raises for a shortfall.

        Raises:
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
        """
        required, atoms = priced(amount)
        engine = self._engine
        if engine.plain:
            now = engine.clock()
            account = engine.account
            if now < account.next_expiry:
                available = account.take_cached(
                    None, atoms, engine.floor, engine.ttl, now, engine.tally
                )
                if available is not None:
                    shown = engine.shown(available)
                    age = now - account.fetched_at  # type: ignore[operator]
                    return _new_check(
                        Check, (True, required, shown, _ZERO, engine.unit, "cache", age)
                    )
        return engine.to_check(required, atoms, engine.decide(atoms, None, blocking=False))

    async def acheck(self, amount: Amount) -> Check:
        """:meth:`check` for coroutines: a lookup runs in a worker thread."""
        required = to_amount(amount)
        atoms = to_atoms(required)
        outcome = await self._engine.adecide(atoms, None, blocking=False)
        return self._engine.to_check(required, atoms, outcome)

    def require(self, amount: Amount) -> Check:
        """Like :meth:`check`, but raises :class:`InsufficientCredits` for a shortfall."""
        required = to_amount(amount)
        atoms = to_atoms(required)
        outcome = self._engine.decide(atoms, None)
        if not outcome.admitted:
            raise self._engine.refusal(atoms, outcome)
        return self._engine.to_check(required, atoms, outcome)

    async def arequire(self, amount: Amount) -> Check:
        """:meth:`require` for coroutines."""
        required = to_amount(amount)
        atoms = to_atoms(required)
        outcome = await self._engine.adecide(atoms, None)
        if not outcome.admitted:
            raise self._engine.refusal(atoms, outcome)
        return self._engine.to_check(required, atoms, outcome)

    def balance(self) -> Decimal:
        """The account balance as this guard sees it: the cached snapshot minus spending
        since, looked up when stale. Holds and the floor are not subtracted. With a
        shared ledger, the fleet's."""
        return self._engine.read_balance()

    async def abalance(self) -> Decimal:
        """:meth:`balance` for coroutines."""
        return await asyncio.to_thread(self._engine.read_balance)

    def available(self) -> Decimal:
        """What this guard could spend now: balance minus holds and floor, within budget."""
        settle_abandoned(self._engine.account)
        return self._engine.read_available()

    async def aavailable(self) -> Decimal:
        """:meth:`available` for coroutines."""
        return await asyncio.to_thread(self._engine.read_available)

    def invalidate(self) -> None:
        """Drop the cached balance of this account (for every guard on it, and with a
        shared ledger for every process)."""
        self._engine.invalidate()

    def holds(self) -> list[Hold]:
        """The holds open now on this guard's account, oldest first, whichever guard took
        them: for finding what a stuck pipeline is waiting on.

        Expired holds are reported (a WARNING) and left out. Decorated calls hold credit
        too, but are not listed: they always end when the call returns or raises.
        """
        settle_abandoned(self._engine.account)
        return self._engine.open_holds()

    def session(
        self,
        prices: RoutePrices | None = None,
        *,
        max_cost: Amount | None = None,
        rodin_prices: RodinPrices | None = None,
    ) -> GuardedSession:
        """A ``requests.Session`` whose billable requests this guard prices and holds.

        Shorthand for ``GuardedSession(guard, prices, max_cost=..., rodin_prices=...)``;
        see :class:`~spendguard.GuardedAdapter` for the pricing rules.

        Args:
            prices: ``"METHOD /path"`` (or a glob, or a whole URL) to an amount, a callable
                of the ``PreparedRequest``, or ``None`` for free.
            max_cost: What to hold for a request whose price is dynamic.
            rodin_prices: The Rodin price table for the built-in pricing.

        Raises:
            ConfigurationError: A price key or amount is malformed.
        """
        from ._session import GuardedSession

        return GuardedSession(self, prices, max_cost=max_cost, rodin_prices=rodin_prices)

    def httpx_client(self, **client_kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose billable requests this guard prices and holds.

        Shorthand for ``httpx.Client(transport=GuardedTransport(guard), **client_kwargs)``;
        see :class:`spendguard.httpx.GuardedTransport`. ``prices``, ``rodin_prices`` and
        ``max_cost`` go to the transport, and a ``transport`` given is the one it wraps.

        Raises:
            ImportError: httpx is not installed (``pip install 'spendguard-preflight[httpx]'``).
            ConfigurationError: A price key or amount is malformed.
        """
        from .httpx import _client

        return _client(self, client_kwargs)

    def async_httpx_client(self, **client_kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose billable requests this guard prices and holds.

        Shorthand for ``httpx.AsyncClient(transport=AsyncGuardedTransport(guard), ...)``;
        see :class:`spendguard.httpx.AsyncGuardedTransport`. ``prices``, ``rodin_prices``
        and ``max_cost`` go to the transport, and a ``transport`` given is the one it wraps.

        Raises:
            ImportError: httpx is not installed (``pip install 'spendguard-preflight[httpx]'``).
            ConfigurationError: A price key or amount is malformed.
        """
        from .httpx import _async_client

        return _async_client(self, client_kwargs)

    def __repr__(self) -> str:
        budget = "None" if self._budget is None else repr(str(self._budget))
        return (
            f"SpendGuard({self._provider!r}, ttl={self.ttl!r}, floor={str(self._floor)!r}, "
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
            self._engine, items, cost, partial=partial, progress=progress, label=label
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
            self._engine, items, cost, partial=partial, progress=progress, label=label
        )

    def forecast(self, items: Iterable[T], cost: ItemCost[T]) -> Forecast:
        """Price a batch and say how much of it fits now, holding nothing.

        A dry run to print before starting a job. It may look the balance up once.

        Raises:
            ProviderError: The balance cannot be had and the policy is ``"raise"``.
            TypeError, ValueError: An item's cost is not a valid amount.
        """
        _, costs = _batch.price_all(items, cost)
        outcome = self._engine.decide(sum(costs), None, blocking=False)
        return _batch.forecast(self._engine, costs, outcome)

    async def aforecast(self, items: Iterable[T] | AsyncIterable[T], cost: ItemCost[T]) -> Forecast:
        """:meth:`forecast` for coroutines, over an iterable or an async iterable."""
        price = _batch.pricer(cost)
        costs = [price(item) for item in await _batch.read_items(items)]
        outcome = await self._engine.adecide(sum(costs), None, blocking=False)
        return _batch.forecast(self._engine, costs, outcome)

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
            TypeError: ``fn`` is a coroutine function (use :meth:`amap`), checked before
                anything is admitted; or it returned an awaitable, which is not run and
                whose hold is released.
        """
        return _map.map_items(self._engine, fn, items, cost, workers)

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

        Raises:
            TypeError: ``fn`` returned something that is not awaitable (a plain function:
                use :meth:`map`); it ran, so its cost is charged.
        """
        return await _map.amap_items(self._engine, fn, items, cost, workers)


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _option_amount(value: Amount, name: str) -> Decimal:
    try:
        return to_amount(value, name=name)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None


__all__ = ["Cost", "SpendGuard", "format_amount"]
