"""spendguard: stop an expensive API call before it runs when the account cannot pay for it.

>>> import spendguard as sg
>>> guard = sg.SpendGuard(sg.Hyper3D(), ttl=60)  # doctest: +SKIP
>>> @guard(cost="0.5")  # doctest: +SKIP
... def generate(prompt): ...
"""

from ._check import Check, Source
from ._decision import Decision, Listener, Stats
from ._errors import (
    AuthenticationError,
    BalanceUnavailable,
    ConfigurationError,
    InsufficientCredits,
    ProviderError,
    SpendGuardError,
)
from ._guard import Cost, OnUnavailable, Spend, SpendGuard
from ._hold import Hold, HoldState
from ._hyper3d import Hyper3D
from ._money import Amount
from ._orthogonal import Orthogonal
from ._provider import Provider
from ._version import __version__

__all__ = [
    "Amount",
    "AuthenticationError",
    "BalanceUnavailable",
    "Check",
    "ConfigurationError",
    "Cost",
    "Decision",
    "Hold",
    "HoldState",
    "Hyper3D",
    "InsufficientCredits",
    "Listener",
    "OnUnavailable",
    "Orthogonal",
    "Provider",
    "ProviderError",
    "Source",
    "Spend",
    "SpendGuard",
    "SpendGuardError",
    "Stats",
    "__version__",
]
