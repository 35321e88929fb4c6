"""A throwaway redis-server, or a throwaway Redis Cluster of them, for tests; standard
library only."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` on loopback, without persistence, in a temporary
    directory: a real Redis for tests of :class:`spendguard.redis.RedisLedger`.

    ``with RedisServer() as server:`` starts it and waits until it answers; ``server.url``
    is what ``RedisLedger.from_url`` takes. :meth:`stop` then :meth:`start` on the same
    port simulates a restart that loses every key.

    Raises:
        RuntimeError: ``redis-server`` is not on ``PATH``, or did not start.
    """

    def __init__(self, port: int | None = None, *, options: Sequence[str] = ()) -> None:
        self._binary = shutil.which("redis-server")
        if self._binary is None:
            raise RuntimeError("redis-server is not on PATH: install it (Debian: redis-server)")
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="spendguard-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._options = tuple(options)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (at most 10 s)."""
        assert self._binary is not None
        self._process = subprocess.Popen(
            [
                self._binary,
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
                *self._options,
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


class RedisClusterServer:
    """A throwaway Redis Cluster on loopback: ``masters`` cluster-enabled ``redis-server``
    processes without persistence and without replicas, joined with
    ``redis-cli --cluster create``, for tests of a ledger on a cluster.

    ``with RedisClusterServer() as cluster:`` starts it and waits until every node reports
    ``cluster_state:ok``; ``cluster.url`` (``redis+cluster://127.0.0.1:<port>``) is what
    ``RedisLedger.from_url`` takes. :meth:`restart` stops one node and starts it again on
    its port: it keeps its slots (its cluster configuration is on disk) and loses its keys.

    Raises:
        RuntimeError: ``redis-server`` or ``redis-cli`` is not on ``PATH`` (Debian:
            redis-server, redis-tools), or the cluster did not form.
    """

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 2000) -> None:
        self._cli = shutil.which("redis-cli")
        if self._cli is None:
            raise RuntimeError("redis-cli is not on PATH: install it (Debian: redis-tools)")
        options = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
        )
        self.nodes = [RedisServer(_bus_port(), options=options) for _ in range(masters)]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port of the first node>``."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServer:
        """Start the nodes, join them, and wait until the cluster is ok (at most 30 s)."""
        assert self._cli is not None
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    self._cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self.wait_until_ok()
        except BaseException:
            self.close()
            raise
        return self

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node reports ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while not all(
            b"cluster_state:ok" in _ask(node.port, "CLUSTER INFO") for node in self.nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.05)

    def node_for_slot(self, slot: int) -> RedisServer:
        """The node serving hash slot ``slot``."""
        for line in _ask(self.nodes[0].port, "CLUSTER NODES").decode().splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2]:
                continue
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def restart(self, node: RedisServer, down: float = 0.2) -> None:
        """Stop ``node`` (its keys are lost), wait ``down`` seconds, start it again."""
        node.stop()
        time.sleep(down)
        node.start()
        self.wait_until_ok()

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _bus_port() -> int:
    """A free port whose cluster bus port (port + 10000) exists too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            return port


def _ask(port: int, command: str) -> bytes:
    """One inline command's reply over a raw socket (b"" when the node does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(command.encode() + b"\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                header, _, body = data.partition(b"\r\n")
                if not chunk or not header.startswith(b"$"):
                    return data
                if len(body) >= int(header[1:]) + 2:
                    return body[: int(header[1:])]
    except OSError:
        return b""
