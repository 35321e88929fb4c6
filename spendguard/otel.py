"""OpenTelemetry metrics for spendguard decisions (``pip install 'spendguard-preflight[otel]'``).

Pass an :class:`OTelMetrics` as a decision listener::

    import spendguard as sg
    from spendguard.otel import OTelMetrics

    guard = sg.SpendGuard(sg.Hyper3D(), on_decision=OTelMetrics())

It records, through ``opentelemetry.metrics`` (the global meter provider unless one is
given):

- ``spendguard.decisions`` (counter): every decision, with the attributes below;
- ``spendguard.shortfall`` (histogram): how much was missing, for every decision that
  found the balance short (refused, or let through in shadow mode), in the provider's unit;
- ``spendguard.balance.age`` (histogram, seconds): how old the balance behind a decision was.

Attributes: ``spendguard.outcome`` (``"admitted"``, ``"refused"``, or ``"shadow"`` for a
call a guard with ``enforce=False`` would have refused), ``spendguard.source``
(``"cache"``, ``"remote"``, ``"fallback"``), ``spendguard.provider``, ``spendguard.guard``,
``spendguard.unit`` and, for a fallback, ``spendguard.error`` (the error's class name).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ._decision import Decision
from ._errors import ConfigurationError
from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["OTelMetrics"]

_INSTALL = "pip install 'spendguard-preflight[otel]'"
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,200}")


class OTelMetrics:
    """A decision listener that records OpenTelemetry metrics.

    Args:
        meter_provider: Where the meter comes from; the global one
            (``opentelemetry.metrics.get_meter_provider()``) by default.
        prefix: The first part of every instrument's name.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed.
        ConfigurationError: ``prefix`` is not a valid instrument name.
    """

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, prefix: str = "spendguard"
    ) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:
            raise ImportError(f"spendguard.otel needs opentelemetry-api; run: {_INSTALL}") from exc
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                "prefix must start with a letter and hold only letters, digits and _.-/ "
                f"(at most 201 characters), got {prefix!r}"
            )
        self.prefix = prefix
        meter = metrics.get_meter("spendguard", __version__, meter_provider=meter_provider)
        self._decisions = meter.create_counter(
            f"{prefix}.decisions",
            unit="{decision}",
            description="Decisions made by spendguard guards, by outcome and source.",
        )
        self._shortfall = meter.create_histogram(
            f"{prefix}.shortfall",
            description="What was missing when a balance was found short, in the unit "
            "named by spendguard.unit.",
        )
        self._age = meter.create_histogram(
            f"{prefix}.balance.age",
            unit="s",
            description="Age of the balance a decision was made from.",
        )

    def __call__(self, decision: Decision) -> None:
        """Record one decision (called by the guard)."""
        if not decision.allowed:
            outcome = "refused"
        elif not decision.enforced:
            outcome = "shadow"
        else:
            outcome = "admitted"
        attributes = {
            "spendguard.outcome": outcome,
            "spendguard.source": decision.source,
            "spendguard.provider": decision.provider,
            "spendguard.guard": decision.guard,
            "spendguard.unit": decision.unit,
        }
        if decision.error is not None:
            attributes["spendguard.error"] = decision.error
        self._decisions.add(1, attributes)
        if decision.shortfall > 0:
            self._shortfall.record(float(decision.shortfall), attributes)
        if decision.age is not None:
            self._age.record(decision.age, attributes)

    def __repr__(self) -> str:
        return f"OTelMetrics(prefix={self.prefix!r})"
