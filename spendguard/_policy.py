"""What a guard makes of a balance, a lookup or an error: pure functions, no I/O, no locks.

The local account and the shared-ledger client both decide through these functions, so
that the budget, the floor, the failure policy (``"raise"``, ``"allow"``, ``"stale"``)
and shadow mode mean the same on both paths. Amounts are ints of atoms (see ``_money``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from ._check import Source
from ._errors import BalanceUnavailable, ProviderError

OnUnavailable = Literal["raise", "allow", "stale"]
"""What a guard does when the balance cannot be looked up: refuse, let the call through, or
decide from a recent balance (see ``SpendGuard(on_unavailable=...)``)."""

Note = Literal["budget", "remote", "shadow"] | str | None
"""Why an outcome is not plain arithmetic: ``"budget"`` (the guard's budget refused),
``"remote"`` (the provider's own check refused), ``"shadow"`` (a refusal let through by
``enforce=False``), or the class name of the provider error behind a fallback."""


class Outcome(NamedTuple):
    """A decision: whether it was admitted, and what it was made from.

    ``available`` is in atoms (``None``: no balance known), already within the budget;
    ``sufficient`` is ``None`` when no balance was known.
    """

    admitted: bool
    available: int | None
    source: Source
    age: float | None
    sufficient: bool | None
    note: Note


def within(available: int | None, left: int | None) -> int | None:
    """``available`` capped by the budget ``left`` (either may be unknown: ``None``)."""
    if left is None:
        return available
    if available is None:
        return left
    return available if available < left else left


def judge(
    amount: int,
    available: int | None,
    left: int | None,
    *,
    source: Source,
    age: float | None,
    remote: bool | None = None,
) -> Outcome:
    """Whether ``amount`` fits in ``available`` (balance minus holds and floor) and in the
    budget ``left``, and, when the provider answered a check itself, in its ``remote``
    verdict. ``available=None`` (no balance known) leaves the budget and ``remote``.
    """
    capped = within(available, left)
    if left is not None and left < amount:
        return Outcome(False, capped, source, age, False, "budget")
    if available is not None and available < amount:
        return Outcome(False, capped, source, age, False, None)
    if remote is False:
        return Outcome(False, capped, source, age, False, "remote")
    return Outcome(True, capped, source, age, None if available is None else True, None)


FailureAction = Literal["raise", "stale", "allow"]


def on_failure(
    error: ProviderError,
    policy: OnUnavailable,
    *,
    enforce: bool,
    age: float | None,
    max_stale: float,
) -> FailureAction:
    """What to do when the balance could not be had.

    ``"stale"``: decide from the last snapshot (a transient failure under
    ``on_unavailable="stale"`` with a snapshot at most ``max_stale`` old); ``"allow"``: let
    the call through, still within the budget and still held (a transient failure under
    ``"allow"``, or any failure in shadow mode); ``"raise"``: refuse with the error. A bad
    key or a malformed answer is never transient.
    """
    transient = isinstance(error, BalanceUnavailable)
    if transient and policy == "stale" and age is not None and age <= max_stale:
        return "stale"
    if (transient and policy == "allow") or not enforce:
        return "allow"
    return "raise"


def fallback(outcome: Outcome, error: ProviderError) -> Outcome:
    """``outcome`` made from a fallback balance, naming the error behind it."""
    return outcome._replace(source="fallback", note=type(error).__name__)


def ends_with_402(exc: BaseException | None) -> bool:
    """Whether ``exc`` carries an HTTP 402 response (``requests.HTTPError``, an httpx
    ``HTTPStatusError`` or anything with ``response.status_code == 402``): the provider
    refused to charge, so the hold is released and the cached balance dropped."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 402


def shadow(outcome: Outcome) -> Outcome:
    """A refusal that shadow mode (``enforce=False``) lets through."""
    return outcome._replace(admitted=True, note="shadow")
