"""The public surface: __all__ is complete, sorted, importable and documented."""

from __future__ import annotations

import ast
import inspect
import itertools
import pickle
import sys
import traceback
import typing
from pathlib import Path
from types import ModuleType

import spendguard as sg


def _is_type_alias(value: object) -> bool:
    """``Literal[...]``, ``X | Y``, ``Callable[...]``: objects that carry no docstring of their own.

    On Python 3.10 a parametrized ``collections.abc.Callable`` also passes
    ``isinstance(value, type)``, so aliases are told apart by their origin, never by that.
    """
    return typing.get_origin(value) is not None


def _defining_module(name: str, value: object) -> ModuleType:
    """The private module that assigns ``name`` the object ``value``."""
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("spendguard._") and vars(module).get(name) is value:
            source = inspect.getsource(module)
            if any(name in _assigned(node) for node in ast.parse(source).body):
                return module
    raise AssertionError(f"{name}: no private module assigns it")


def _assigned(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {target.id for target in node.targets if isinstance(target, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _attribute_docstring(module: ModuleType, name: str) -> str | None:
    """The string literal right after ``name = ...`` (where documentation tools read it)."""
    body = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8")).body
    for node, after in itertools.pairwise(body):
        if (
            name in _assigned(node)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            return after.value.value
    return None


def test_all_is_sorted_and_complete() -> None:
    """Every public name in the package namespace is in __all__, and __all__ is sorted."""
    public = {name for name in vars(sg) if not name.startswith("_")} - {"testing", "pricing"}
    public = {name for name in public if not isinstance(getattr(sg, name), type(sg))}
    assert sorted(sg.__all__) == sg.__all__
    assert public | {"__version__"} == set(sg.__all__)


def test_every_export_is_documented() -> None:
    """Every exported class and function carries a docstring of its own."""
    for name in sg.__all__:
        value = getattr(sg, name)
        if _is_type_alias(value) or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        assert value.__doc__, name


def test_every_type_alias_is_documented() -> None:
    """Every exported type alias has a docstring right after its assignment, on any Python."""
    aliases = [name for name in sg.__all__ if _is_type_alias(getattr(sg, name))]
    assert {"Cost", "Listener", "Source"} <= set(aliases)
    for name in aliases:
        module = _defining_module(name, getattr(sg, name))
        assert _attribute_docstring(module, name), f"{module.__name__}.{name}"


def test_version() -> None:
    """The version is a string."""
    assert isinstance(sg.__version__, str)


def test_errors_read_as_the_public_package() -> None:
    """Every exported error names ``spendguard`` in a traceback, and pickles by it."""
    errors = [
        value
        for value in map(vars(sg).get, sg.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(errors) >= 8
    for error in errors:
        assert error.__module__ == "spendguard", error
    error = sg.ConfigurationError("bad option")
    line = traceback.format_exception_only(error)[-1]
    assert line == "spendguard.ConfigurationError: bad option\n"
    assert type(pickle.loads(pickle.dumps(error))) is sg.ConfigurationError
