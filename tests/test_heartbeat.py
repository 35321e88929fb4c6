"""The heartbeat that keeps a shared ledger's holds alive while their process lives."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import pytest

from spendguard._heartbeat import Heartbeat


def test_renews_what_is_open_until_discarded() -> None:
    """Every beat sees exactly the keys added and not discarded."""
    seen: list[dict[str, int]] = []
    beat_done = threading.Event()

    def renew(open_now: Mapping[str, int]) -> None:
        seen.append(dict(open_now))
        beat_done.set()

    beat: Heartbeat[str, int] = Heartbeat(renew, 0.01, "test")
    beat.add("a", 1)
    beat.add("b", 2)
    assert beat_done.wait(5)
    assert seen[-1] == {"a": 1, "b": 2}
    beat.discard("a")
    beat.discard("missing")
    beat_done.clear()
    seen.clear()
    assert beat_done.wait(5)
    assert seen[-1] == {"b": 2}
    beat.stop()


def test_a_failing_renewal_does_not_stop_the_beat(caplog: pytest.LogCaptureFixture) -> None:
    """An exception from renew is logged and the next beat still comes."""
    calls = []
    again = threading.Event()

    def renew(open_now: Mapping[str, int]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")
        again.set()

    beat: Heartbeat[str, int] = Heartbeat(renew, 0.01, "test")
    beat.add("a", 1)
    assert again.wait(5)
    assert "could not renew" in caplog.text
    beat.stop()


def test_restarts_after_stop() -> None:
    """A heartbeat stopped and then given a key beats again."""
    again = threading.Event()
    beat: Heartbeat[str, int] = Heartbeat(lambda _: again.set(), 0.01, "test")
    beat.add("a", 1)
    beat.stop()
    again.clear()
    beat.add("b", 1)
    assert again.wait(5)
    beat.stop()


def test_rejects_a_bad_interval() -> None:
    """A zero or negative interval is a ValueError."""
    with pytest.raises(ValueError, match="interval"):
        Heartbeat(lambda _: None, 0, "test")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")
def test_a_forked_child_starts_empty() -> None:
    """After fork the child holds nothing of its parent's."""
    beat: Heartbeat[str, int] = Heartbeat(lambda _: None, 60, "test")
    beat.add("a", 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str(len(beat.snapshot())).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"0"
    assert beat.snapshot() == {"a": 1}
    beat.stop()
