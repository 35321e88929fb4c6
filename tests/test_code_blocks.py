"""Every Python and JSON code block in README.md and docs/ runs, against the simulator.

Blocks are read with Sybil's Markdown parsers and run in order, one test per block, named
``<file>:<line>``. The blocks of one section (up to the next ``#`` or ``##`` heading) share a
namespace, as a reader assumes; each section starts from `STAND_INS` alone. Top-level
``await`` and ``async with`` run in a fresh event loop; a block written as a ``>>>`` session
is a doctest, its output compared. JSON blocks must parse. In ``console`` blocks each
``$ spendguard ...`` line runs, and what it prints (stdout, then stderr) must be the lines
under it. ``bash`` blocks are not run: they install packages or run this suite.

Providers built from the environment (``sg.Hyper3D()``, ``sg.Orthogonal()``) reach a
`ProviderSimulator` holding `HYPER3D_CREDITS` credits and $`ORTHOGONAL_USD`, named
``simulator`` in every block; account state is reset before each block (by the pytest plugin).

Directives, written as HTML comments just before a block, render as nothing:
``<!-- skip: next "why" -->`` skips it (only where it cannot run here, for instance when it
calls the real provider); ``<!-- invisible-code-block: python -->`` runs code unseen.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import unittest
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

import spendguard as sg
from spendguard.testing import ProviderSimulator

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HYPER3D_CREDITS = "120"
ORTHOGONAL_USD = "25.00"

# Blocks known to be wrong, to be corrected in the README: ``(text in the block, why)``.
# Each must still fail (strict xfail); an entry that matches no block fails a test below.
KNOWN_BROKEN: list[tuple[str, str]] = []

# A block using an optional part that is not installed is skipped, as tests/test_redis.py
# is, unless SPENDGUARD_REQUIRE_REDIS=1 (CI) makes that an error.
REDIS_REQUIRED = os.environ.get("SPENDGUARD_REQUIRE_REDIS") == "1"
_NOT_INSTALLED = ("pip install 'spendguard-preflight[", "redis-server is not on PATH")

_HEADING = re.compile(r"^#{1,2} +(.+?)\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _stand_in(*args: object, **kwargs: object) -> None:
    """Stands for the caller's own work in a block."""


def _price(prompt: str) -> Decimal:
    """Stands for a cost function: 1 credit for the first 20 prompts, 0.5 for the rest."""
    return Decimal("1.0") if int(prompt.rsplit(" ", 1)[1]) < 20 else Decimal("0.5")


# Names the prose takes as given. A block defines the rest itself, or in its section.
STAND_INS: dict[str, Any] = {
    "sg": sg,
    "Decimal": Decimal,
    "prompts": [f"a chair, variant {i}" for i in range(200)],
    "price": _price,
    "generate": _stand_in,
    "submit_highpack_job": _stand_in,
}


def _evaluate_python(example: Example) -> None:
    """Run a block, with top-level ``await`` allowed; tracebacks point into the file."""
    __tracebackhide__ = True
    source = "\n" * (example.line + example.parsed.line_offset) + example.parsed
    code = compile(
        source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)


def _evaluate_console(example: Example) -> str | None:
    """Run each ``$ spendguard ...`` line; what it prints must be the lines under it."""
    __tracebackhide__ = True
    for command, expected in re.findall(r"^\$ (.+)\n((?:(?!\$ ).*\n)*)", example.parsed, re.M):
        argv = shlex.split(command)
        if argv[0] != "spendguard":
            return f"only spendguard commands run here, not {command!r}"
        done = subprocess.run(
            [sys.executable, "-m", "spendguard", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        got = (done.stdout + done.stderr).rstrip()
        if got != expected.rstrip():
            return f"$ {command}\nexpected:\n{expected.rstrip()}\ngot:\n{got}"
    return None


def _evaluate_json(example: Example) -> None:
    """A JSON block must parse."""
    json.loads(example.parsed, parse_float=Decimal)


def _python_parser() -> PythonCodeBlockParser:
    parser = PythonCodeBlockParser()
    parser.codeblock_parser = CodeBlockParser("python", _evaluate_python)
    return parser


PARSERS = [
    _python_parser(),
    CodeBlockParser("json", _evaluate_json),
    CodeBlockParser("console", _evaluate_console),
    SkipParser(),
]


def _sections(text: str) -> list[tuple[int, str]]:
    """``(offset, title)`` of each ``#`` and ``##`` heading outside code fences."""
    found = [(0, "")]
    fence = ""
    offset = 0
    for line in text.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if opening and (not fence or opening.group(1).startswith(fence)):
            fence = "" if fence else opening.group(1)
        elif not fence and (heading := _HEADING.match(line)):
            found.append((offset, heading.group(1)))
        offset += len(line)
    return found


class _Block:
    """One code example, the directives just before it, and the section it belongs to."""

    def __init__(self, example: Example, directives: list[Example], section: str) -> None:
        self.example = example
        self.directives = directives
        self.section = section
        self.first_in_section = False
        self.first_in_document = False

    @property
    def name(self) -> str:
        return f"{Path(self.example.path).relative_to(ROOT)}:{self.example.line}"


def _blocks() -> Iterator[_Block]:
    for path in DOCUMENTS:
        document = Document.parse(str(path), *PARSERS)
        sections = _sections(document.text)
        directives: list[Example] = []
        previous = None
        for example in document.examples():
            if isinstance(example.region.evaluator, Skipper):
                directives.append(example)
                continue
            section = next(title for at, title in reversed(sections) if at <= example.start)
            block = _Block(example, directives, section)
            block.first_in_document = previous is None
            block.first_in_section = previous is None or previous.section != section
            directives, previous = [], block
            yield block


BLOCKS = list(_blocks())


def _known_broken(block: _Block) -> list[str]:
    return [why for text, why in KNOWN_BROKEN if text in str(block.example.parsed)]


def _param(block: _Block) -> Any:
    reasons = _known_broken(block)
    marks = [pytest.mark.xfail(reason=reasons[0], strict=True)] if reasons else []
    return pytest.param(block, id=block.name, marks=marks)


def _restore(simulator: ProviderSimulator) -> None:
    """Each document starts from the same balances, with no faults and no requests counted."""
    simulator.hyper3d_balance = HYPER3D_CREDITS
    simulator.orthogonal_balance = ORTHOGONAL_USD
    simulator.clear_faults()
    simulator.reset_counts()


@pytest.fixture(scope="module")
def simulator() -> Iterator[ProviderSimulator]:
    """The simulator every block's providers reach."""
    with ProviderSimulator(
        hyper3d_credits=HYPER3D_CREDITS, orthogonal_usd=ORTHOGONAL_USD
    ) as simulator:
        yield simulator


@pytest.fixture
def provider_env(simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ``sg.Hyper3D()`` and ``sg.Orthogonal()`` at the simulator."""
    for name in ("HYPER3D_API_KEY", "ORTHOGONAL_API_KEY"):
        monkeypatch.setenv(name, simulator.api_key)
    for name in ("SPENDGUARD_HYPER3D_URL", "SPENDGUARD_ORTHOGONAL_URL"):
        monkeypatch.setenv(name, simulator.url)
    monkeypatch.setitem(STAND_INS, "key", simulator.api_key)
    monkeypatch.setitem(STAND_INS, "simulator", simulator)


def _run(block: _Block) -> None:
    __tracebackhide__ = True
    for directive in block.directives:
        directive.evaluate()
    block.example.evaluate()


def _section_so_far(block: _Block) -> list[_Block]:
    """The blocks above ``block`` in its section, first to last."""
    index = BLOCKS.index(block)
    start = index
    while not BLOCKS[start].first_in_section:
        start -= 1
    return BLOCKS[start:index]


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("provider_env")
@pytest.mark.parametrize("block", [_param(block) for block in BLOCKS])
def test_code_block(block: _Block, simulator: ProviderSimulator) -> None:
    """The block runs as written (or is skipped by a directive that says why)."""
    __tracebackhide__ = True
    if block.first_in_document:
        _restore(simulator)
    namespace = block.example.namespace
    if block.first_in_section or namespace.get("__section__") != block.section:
        namespace.clear()
        namespace.update(STAND_INS, __section__=block.section)
        if not block.first_in_section:
            # Selected alone (-k, --lf): the blocks above it set the scene first.
            for earlier in _section_so_far(block):
                with contextlib.suppress(unittest.SkipTest):
                    if _known_broken(earlier):
                        with contextlib.suppress(Exception):
                            _run(earlier)
                    else:
                        _run(earlier)
    try:
        _run(block)
    except unittest.SkipTest as skip:
        pytest.skip(f"{block.name}: {skip}")
    except (ImportError, RuntimeError) as exc:
        if REDIS_REQUIRED or not any(text in str(exc) for text in _NOT_INSTALLED):
            raise
        pytest.skip(f"{block.name}: {exc}")


def test_known_broken_entries_match_a_block() -> None:
    """Every KNOWN_BROKEN entry still names a block; once corrected, drop the entry."""
    stale = [
        text
        for text, _ in KNOWN_BROKEN
        if not any(text in str(block.example.parsed) for block in BLOCKS)
    ]
    assert not stale, f"no block contains these KNOWN_BROKEN texts any more: {stale}"


def test_every_document_has_a_running_block() -> None:
    """The runner finds blocks in README.md and in every docs page that has Python."""
    names = {Path(block.example.path).name for block in BLOCKS}
    assert "README.md" in names
    with_python = {p.name for p in DOCUMENTS if "```python" in p.read_text(encoding="utf-8")}
    assert with_python <= names
