"""A loopback HTTP server that sends whatever bytes a test scripts, when it says so.

``http.server`` cannot misbehave at the byte level; this one can: trickle a status line,
lie in ``Content-Length``, break chunked framing, claim a compression it does not use,
or stall until told to go on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

Step = tuple[bytes, float]
"""Bytes to send, then seconds to pause."""

Script = Callable[[bytes], Iterable[Step]]
"""What to send for one request (its raw head and body)."""


def answer(
    status: int | str = 200,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    length: int | str | None = "auto",
) -> bytes:
    """A whole answer as bytes; ``length="auto"`` sends the true Content-Length, an int a
    lie, ``None`` none at all (the body then ends when the connection closes)."""
    reason = b"" if isinstance(status, str) else b" Whatever"
    lines = [f"HTTP/1.1 {status}".encode("latin-1") + reason]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if length == "auto":
        lines.append(f"Content-Length: {len(body)}".encode())
    elif length is not None:
        lines.append(f"Content-Length: {length}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def trickled(data: bytes, pause: float) -> list[Step]:
    """``data`` one byte at a time, ``pause`` seconds apart."""
    return [(data[i : i + 1], pause) for i in range(len(data))]


class HostileServer:
    """Serves each connection one request, answered by ``script``, then closes it.

    Attributes:
        script: What to send; replace it between requests.
        requests: The raw requests received, in order.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda _request: [(answer(200, b"{}"), 0.0)])
        self.requests: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self.gate.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                request = _read_request(conn)
                with self._lock:
                    self.requests.append(request)
                while not self.gate.wait(0.05):
                    if self._stop.is_set():
                        return
                for data, pause in self.script(request):
                    if data:
                        conn.sendall(data)
                    if pause and self._stop.wait(pause):
                        return
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(0.5)
                while conn.recv(65536):
                    pass
            except OSError:
                return


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
