"""A throwaway redis-server on a free loopback port, and the worker processes of the
Redis tests (importable by ``multiprocessing``'s spawn start method)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` without persistence in a temporary directory; stop and start it
    again on the same port to simulate a restart that loses every key."""

    def __init__(self, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH")
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="spendguard-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (at most 10 s)."""
        assert REDIS_SERVER is not None
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--logfile",
                str(Path(self._dir.name) / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def ping(self) -> bool:
        """Whether the server answers PING, over a raw socket."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        """Stop the server (its keys are lost); safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- worker processes (spawned: module-level functions, plain arguments) ------------------


def spend_worker(
    *,
    redis_url: str,
    sim_url: str,
    api_key: str,
    calls: int,
    ttl: float,
    start: Any,
    results: Any,
) -> None:
    """Make ``calls`` guarded Rodin generations (0.5 credits each) through a guard on a
    RedisLedger; put ``(admitted, refused, lookups)`` on ``results``."""
    import requests

    import spendguard as sg
    from spendguard.redis import RedisLedger

    admitted = refused = 0
    with (
        RedisLedger.from_url(redis_url) as ledger,
        sg.Hyper3D(api_key, base_url=sim_url, timeout=5) as provider,
        requests.Session() as http,
    ):
        guard = sg.SpendGuard(provider, ttl=ttl, refresh_interval=ttl, ledger=ledger)
        start.wait()
        for _ in range(calls):
            try:
                with guard.spend("0.5"):
                    response = http.post(
                        f"{sim_url}/api/v2/rodin",
                        data={"prompt": "a chair", "tier": "Regular"},
                        headers={"Authorization": f"Bearer {api_key}"},
                        timeout=5,
                    )
                    response.raise_for_status()
                admitted += 1
            except sg.InsufficientCredits:
                refused += 1
        results.put((admitted, refused, guard.stats.lookups))


def hold_forever(redis_url: str, sim_url: str, api_key: str, amount: str, held: Any) -> None:
    """Hold ``amount`` on a RedisLedger with a 1 s ``hold_ttl``, signal ``held``, and never
    end it (the test kills this process)."""
    import spendguard as sg
    from spendguard.redis import RedisLedger

    ledger = RedisLedger.from_url(redis_url)
    provider = sg.Hyper3D(api_key, base_url=sim_url, timeout=5)
    guard = sg.SpendGuard(provider, hold_ttl=1.0, ledger=ledger)
    with guard.spend(Decimal(amount)):
        held.set()
        while True:
            time.sleep(1)


def kill(pid: int) -> None:
    """``kill -9``."""
    os.kill(pid, signal.SIGKILL)
