"""What observers see: a frozen record of every decision, and a guard's counters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal

import attrs

from ._check import Source

log = logging.getLogger("spendguard")


@attrs.frozen
class Decision:
    """One decision of a guard, as handed to ``on_decision`` listeners.

    Attributes:
        allowed: Whether the call was let through (or, for a plain check, would be).
        sufficient: Whether the balance covered it; ``None`` when no balance was known
            (the provider was unavailable and the policy let the call through).
        required: The amount asked for.
        available: What could be spent when deciding.
        shortfall: ``max(required - available, 0)`` when insufficient, else 0.
        source: ``"cache"``, ``"remote"`` or ``"fallback"``.
        age: Seconds since the balance used was looked up (``None`` if none was known).
        provider: The provider's name.
        guard: The guard's name.
        unit: The provider's unit.
        enforced: ``False`` when a shadow-mode guard (``enforce=False``) let through a
            call it would have refused.
        error: The class name of the provider error behind a fallback, if any.
    """

    allowed: bool
    sufficient: bool | None
    required: Decimal
    available: Decimal
    shortfall: Decimal
    source: Source
    age: float | None
    provider: str
    guard: str
    unit: str
    enforced: bool = True
    error: str | None = None


Listener = Callable[[Decision], object]
"""Called with every :class:`Decision`; whatever it raises is logged and ignored."""


@attrs.frozen
class Stats:
    """A snapshot of a guard's counters since it was created.

    Attributes:
        decisions: Every decision made (guarded calls, ``spend``, ``check``, ``require``,
            batches and forecasts).
        admitted: Decisions that let the work through.
        refused: Decisions that did not (in shadow mode: that would not have).
        cache_hits: Decisions made from a fresh snapshot, without any request.
        lookups: Balance lookups this guard made (a thread that waited for another
            thread's lookup does not count one).
        fallbacks: Decisions made without a fresh balance under ``"allow"``/``"stale"``
            or in shadow mode.
        errors: Provider errors met while deciding, by class name.
    """

    decisions: int
    admitted: int
    refused: int
    cache_hits: int
    lookups: int
    fallbacks: int
    errors: Mapping[str, int]


def listeners_of(on_decision: Listener | Iterable[Listener] | None) -> tuple[Listener, ...]:
    """Normalise ``on_decision=`` to a tuple of callables.

    Raises:
        TypeError: Something that is not callable was given.
    """
    if on_decision is None:
        return ()
    found = (on_decision,) if callable(on_decision) else tuple(on_decision)
    for listener in found:
        if not callable(listener):
            raise TypeError(f"on_decision listeners must be callable, got {listener!r}")
    return found


def notify(listeners: tuple[Listener, ...], decision: Decision) -> None:
    """Hand ``decision`` to every listener; a listener's exception never escapes."""
    for listener in listeners:
        try:
            listener(decision)
        except Exception:
            log.exception("on_decision listener %r raised; ignored", listener)
