"""Keeps a shared ledger's holds alive while the process that took them lives.

A ledger gives each hold an expiry so that a process killed mid-call (``kill -9``) cannot
block the fleet for ever. A process that is alive renews what it holds well before that
expiry, from one daemon thread per ledger, whatever its calls are doing: a decorated call
or a ``with guard.spend()`` block may run far longer than the expiry. When the process
dies, the thread dies with it and its holds expire.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

log = logging.getLogger("spendguard")

K = TypeVar("K")
V = TypeVar("V")

_SLICE = 0.5
_beats: weakref.WeakSet[Heartbeat[object, object]] = weakref.WeakSet()


class Heartbeat(Generic[K, V]):
    """Calls ``renew(open)`` every ``interval`` seconds while anything is open.

    ``open`` maps each key :meth:`add`-ed and not yet :meth:`discard`-ed to its value (a
    ledger keeps a hold's account and amount there, to re-announce a hold its store lost).
    ``renew`` runs in a daemon thread; what it raises is logged as a WARNING and the beat
    goes on. After ``os.fork()`` the child starts empty: the parent's holds are the
    parent's to renew.
    """

    def __init__(self, renew: Callable[[Mapping[K, V]], None], interval: float, name: str) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self._renew = renew
        self.interval = interval
        self._name = name
        self._lock = threading.Lock()
        self._open: dict[K, V] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        _beats.add(self)  # type: ignore[arg-type]

    def add(self, key: K, value: V, *, within: float | None = None) -> None:
        """Renew ``key`` from now on, until :meth:`discard`; ``within``: seconds after which
        ``key`` would expire unrenewed (the beat then comes at least three times as often)."""
        with self._lock:
            self._open[key] = value
            if within is not None and 0 < within / 3 < self.interval:
                self.interval = within / 3
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=_beat,
                    args=(weakref.ref(self), self._wake),
                    name=self._name,
                    daemon=True,
                )
                self._thread.start()

    def discard(self, key: K) -> None:
        """Stop renewing ``key``; nothing happens when it is not there."""
        with self._lock:
            self._open.pop(key, None)

    def snapshot(self) -> dict[K, V]:
        """What is open now."""
        with self._lock:
            return dict(self._open)

    def stop(self) -> None:
        """Stop the thread (the ledger is closed); what is open is forgotten."""
        with self._lock:
            self._open.clear()
            self._wake.set()
            self._wake = threading.Event()
            self._thread = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._open = {}
        self._wake = threading.Event()
        self._thread = None


def _beat(ref: weakref.ref[Heartbeat[K, V]], stopped: threading.Event) -> None:
    last = time.monotonic()
    while True:
        beat = ref()
        if beat is None:
            return
        due = last + beat.interval
        del beat
        # Short waits, so that a shorter interval set meanwhile takes effect at once.
        if stopped.wait(min(max(due - time.monotonic(), 0.0), _SLICE)):
            return
        if time.monotonic() < due:
            continue
        last = time.monotonic()
        beat = ref()
        if beat is None:
            return
        open_now = beat.snapshot()
        if open_now:
            try:
                beat._renew(open_now)
            except Exception as exc:  # the next beat tries again; holds may expire meanwhile
                log.warning("%s: could not renew held amounts: %s", beat._name, exc)
        del beat


def _reset_after_fork() -> None:
    for beat in list(_beats):
        beat._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
