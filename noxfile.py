"""The README's test command on every supported Python: ``nox`` (one run: ``nox -s tests-3.12``).

nox finds ``python3.10`` ... ``python3.13`` on ``PATH``. Interpreters installed with pyenv
are found too, without ``pyenv shell``: the newest installed 3.10-3.13 are made active for
the run (as ``PYENV_VERSION``, so pyenv's shims answer for each) and their directories
are appended to ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
_PYENV_HOME_BIN = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "bin")

nox.options.sessions = ["tests"]
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = True


def _activate_pyenv_versions() -> None:
    pyenv = shutil.which("pyenv") or shutil.which("pyenv", path=_PYENV_HOME_BIN)
    if pyenv is None:
        return

    def ask(*args: str) -> str:
        result = subprocess.run(
            [pyenv, *args], capture_output=True, text=True, check=False, timeout=30
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    installed = ask("versions", "--bare").split()
    latest: dict[str, tuple[int, ...]] = {}
    for version in installed:
        parts = version.split(".")
        if len(parts) == 3 and all(part.isdigit() for part in parts):
            minor = ".".join(parts[:2])
            if minor in PYTHONS:
                latest[minor] = max(latest.get(minor, ()), tuple(map(int, parts)))
    if not latest:
        return
    versions = [".".join(map(str, v)) for v in latest.values()]
    root = os.environ.setdefault("PYENV_ROOT", ask("root"))
    # The version already active stays first, so a plain ``python`` does not change.
    # (pyenv's own shim may have set PYENV_VERSION to that one version: it is extended.)
    active = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    active = active or ask("version-name").split()
    os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys([*active, *versions]))
    # Without pyenv's shims on PATH, its interpreters are found at the end of PATH.
    bins = [os.path.join(root, "versions", version, "bin") for version in versions]
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *bins])


_activate_pyenv_versions()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The README's test command, with the extras that let no test skip (Redis, OpenTelemetry)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pip", "install", "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)
