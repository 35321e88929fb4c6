"""A batch's progress bar, drawn by tqdm (the optional ``progress`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, NoReturn

from ._money import format_amount

if TYPE_CHECKING:
    from tqdm import tqdm

INSTALL = "pip install 'spendguard-preflight[progress]'"


class ProgressBar:
    """Items done, with what the batch spent, what it still holds and what is available."""

    __slots__ = ("_bar", "_unit")

    def __init__(self, bar: tqdm[NoReturn], unit: str) -> None:
        self._bar = bar
        self._unit = unit

    def advance(self, spent: Decimal, held: Decimal, available: Decimal) -> None:
        """Count one more item done and show the amounts beside the bar."""
        unit = self._unit
        # A mapping keeps this order; keyword arguments would be sorted by name.
        amounts = {"spent": spent, "held": held, "available": available}
        self._bar.set_postfix(
            {name: format_amount(value, unit) for name, value in amounts.items()},
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        """Draw the bar one last time and let go of the terminal."""
        self._bar.close()


def bar_factory() -> Callable[[int, str, str], ProgressBar]:
    """Import tqdm now, before anything is held, and return a way to build bars.

    Raises:
        ImportError: tqdm is not installed; the message names the extra to install.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError(f"progress=True needs tqdm: {INSTALL}") from None

    def make(total: int, unit: str, description: str) -> ProgressBar:
        return ProgressBar(tqdm(total=total, desc=description, unit="item"), unit)

    return make
