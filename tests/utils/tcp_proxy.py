"""A loopback TCP proxy that a test can cut and restore (PostgreSQL, Qdrant or any TCP upstream faults).

`TcpProxy(target_port).start()` listens on 127.0.0.1:<free port> and pipes every connection to
127.0.0.1:<target_port> on its own thread. Fault modes:

- `cut()`: close every open connection and refuse new ones (the listener is closed: connection refused);
- `blackhole()`: accept connections but forward nothing in either direction (a hung upstream);
- `restore()`: forward again on the same port.

Only loopback addresses are used; `stop()` closes everything.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

from tests.fakes.openai_server import free_port


class TcpProxy:
    """Forward 127.0.0.1:port -> target_host:target_port, with cut / blackhole / restore switches."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        if target_host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError("the test proxy only forwards to loopback")
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.mode = "forward"
        self.connections_accepted = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- switches ------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        """Listen and forward."""
        self._stopped.clear()
        self._listen()
        self._thread = threading.Thread(target=self._serve, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.mode = "cut"
        self._close_listener()
        self._drop_all()

    def blackhole(self) -> None:
        """Accept connections but forward nothing (existing ones go silent too)."""
        self.mode = "blackhole"
        if self._listener is None:
            self._listen()

    def restore(self) -> None:
        """Forward again."""
        self.mode = "forward"
        if self._listener is None:
            self._listen()

    def stop(self) -> None:
        """Close everything and stop the thread."""
        self._stopped.set()
        self._close_listener()
        self._drop_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.listen(128)
        sock.setblocking(False)
        with self._lock:
            self._listener = sock

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            selector = selectors.DefaultSelector()
            try:
                if listener is not None:
                    with contextlib.suppress(ValueError, OSError):
                        selector.register(listener, selectors.EVENT_READ, ("accept", None))
                if self.mode == "forward":
                    for client, upstream in pairs:
                        if upstream is None:
                            continue
                        with contextlib.suppress(ValueError, OSError, KeyError):
                            selector.register(client, selectors.EVENT_READ, ("pipe", (client, upstream)))
                            selector.register(upstream, selectors.EVENT_READ, ("pipe", (upstream, client)))
                try:
                    events = selector.select(timeout=0.05)
                except (OSError, ValueError):
                    continue
                for key, _mask in events:
                    kind, data = key.data
                    if kind == "accept":
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    else:
                        self._pipe(*data)
            finally:
                selector.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        self.connections_accepted += 1
        upstream: socket.socket | None = None
        if self.mode == "forward":
            try:
                upstream = socket.create_connection(self.target, timeout=3)
                upstream.setblocking(True)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                return
        with self._lock:
            self._pairs.append((client, upstream))

    def _pipe(self, source: socket.socket, dest: socket.socket) -> None:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                dest.sendall(data)
                return
        self._drop_pair(source)

    def _drop_pair(self, sock: socket.socket) -> None:
        with self._lock:
            match = [p for p in self._pairs if sock in p]
            self._pairs = [p for p in self._pairs if sock not in p]
        for pair in match:
            for item in pair:
                if item is not None:
                    with contextlib.suppress(OSError):
                        item.close()
