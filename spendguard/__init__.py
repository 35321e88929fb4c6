"""spendguard: stop an expensive API call before it runs when the account cannot pay for it.

>>> import spendguard as sg
>>> guard = sg.SpendGuard(sg.Hyper3D(), ttl=60)  # doctest: +SKIP
>>> @guard(cost="0.5")  # doctest: +SKIP
... def generate(prompt): ...
"""

import logging as _logging

from ._batch import AsyncBatch, Batch, Forecast, ItemCost
from ._check import Check, Source
from ._decision import Decision, Listener, Stats
from ._errors import (
    AuthenticationError,
    BalanceUnavailable,
    ConfigurationError,
    InsufficientCredits,
    LedgerError,
    ProviderError,
    ReentryError,
    SpendGuardError,
)
from ._guard import Cost, SpendGuard
from ._hold import Hold, HoldState
from ._hyper3d import Hyper3D
from ._ledger import Admission, Ledger
from ._map import MapResult, Refusal
from ._money import Amount
from ._orthogonal import Orthogonal
from ._policy import OnUnavailable
from ._provider import Provider
from ._session import GuardedAdapter, GuardedSession
from ._spend import Spend, current_hold
from ._version import __version__

# A library leaves logging to the application: without its own configuration, nothing
# spendguard logs reaches stderr through logging's last-resort handler.
_logging.getLogger("spendguard").addHandler(_logging.NullHandler())

__all__ = [
    "Admission",
    "Amount",
    "AsyncBatch",
    "AuthenticationError",
    "BalanceUnavailable",
    "Batch",
    "Check",
    "ConfigurationError",
    "Cost",
    "Decision",
    "Forecast",
    "GuardedAdapter",
    "GuardedSession",
    "Hold",
    "HoldState",
    "Hyper3D",
    "InsufficientCredits",
    "ItemCost",
    "Ledger",
    "LedgerError",
    "Listener",
    "MapResult",
    "OnUnavailable",
    "Orthogonal",
    "Provider",
    "ProviderError",
    "ReentryError",
    "Refusal",
    "Source",
    "Spend",
    "SpendGuard",
    "SpendGuardError",
    "Stats",
    "__version__",
    "current_hold",
]

# The errors read as ``spendguard.Name`` in tracebacks, not as the private module that
# defines them (other classes keep theirs, where ``inspect.getsource`` finds them).
for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type) and issubclass(_public, SpendGuardError):
        _public.__module__ = __name__
del _name, _public
