"""Library manners: spendguard's logging stays silent until the application sets it up."""

from __future__ import annotations

import subprocess
import sys


def test_unconfigured_logging_prints_nothing() -> None:
    """A WARNING from spendguard in an application without logging set up reaches no stream."""
    code = (
        "import logging, spendguard\n"
        "logging.getLogger('spendguard').warning('would refuse 2 credits')\n"
        "logging.getLogger('spendguard.cli').warning('nested logger')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert (result.stdout, result.stderr) == ("", "")


def test_configured_logging_still_receives_records() -> None:
    """The NullHandler does not hide records from a handler the application adds."""
    code = (
        "import logging, spendguard\n"
        "logging.basicConfig(format='%(name)s %(message)s')\n"
        "logging.getLogger('spendguard').warning('would refuse 2 credits')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stderr == "spendguard would refuse 2 credits\n"
