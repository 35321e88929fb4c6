"""A griffe extension: turn the Sphinx roles in docstrings into MkDocs cross-references.

``:class:`~spendguard.Hold``` becomes ``[`Hold`][spendguard.Hold]`` and ``:meth:`holds```
becomes ``[`holds()`][holds]``, resolved from the docstring's own scope
(``scoped_crossrefs``), so a reference to something that does not exist fails
``mkdocs build --strict``. Names from other libraries stay code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(class|meth|func|attr|data|exc|obj|mod):`(~?)([\w.]+)`")


def _link(match: re.Match[str]) -> str:
    role, short, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if short else target
    if role in ("meth", "func"):
        shown += "()"
    outside = "." in target and target[0].islower() and not target.startswith("spendguard")
    if outside:  # another library's name (fnmatch.fnmatchcase): no inventory to link to
        return f"`{shown}`"
    return f"[`{shown}`][{target}]"


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_link, obj.docstring.value)
