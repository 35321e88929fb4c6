"""The public surface: __all__ is complete, sorted and importable."""

from __future__ import annotations

import spendguard as sg


def test_all_is_sorted_and_complete() -> None:
    """Every public name in the package namespace is in __all__, and __all__ is sorted."""
    public = {name for name in vars(sg) if not name.startswith("_")} - {"testing", "pricing"}
    public = {name for name in public if not isinstance(getattr(sg, name), type(sg))}
    assert sorted(sg.__all__) == sg.__all__
    assert public | {"__version__"} == set(sg.__all__)


def test_every_export_is_documented() -> None:
    """Every exported class and function carries a docstring."""
    for name in sg.__all__:
        value = getattr(sg, name)
        if callable(value) and isinstance(value, type):
            assert value.__doc__, name


def test_version() -> None:
    """The version is a string."""
    assert isinstance(sg.__version__, str)
