"""A user's type checker sees the installed package: tests/typing/api.py passes mypy --strict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with the dev extra: pip install -e '.[dev]'")


def test_user_code_type_checks_against_the_installed_package(tmp_path: Path) -> None:
    """mypy --strict run outside the checkout finds spendguard, and no call degrades to Any."""
    script = tmp_path / "api.py"
    shutil.copy(Path(__file__).parent / "typing" / "api.py", script)
    env = {name: value for name, value in os.environ.items() if name != "MYPYPATH"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "api.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout
