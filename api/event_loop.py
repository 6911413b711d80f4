"""The event loop of the Gunicorn workers: uvloop, and a burst of new connections shared by the workers.

uvloop runs the same asyncio code with its transports, timers and callbacks in C: about a fifth less CPU
per chat stream in the API processes (`bench.chat`). Every worker listens on the one socket the Gunicorn
master opened, and the kernel wakes all of them when a connection arrives; a server that accepts the whole
backlog per wake-up (asyncio's and uvloop's own do) lets the first worker to run take the whole burst: in
`bench.chat`, 36 to 50 of 50 simultaneous streams landed on one of two workers while the other sat idle.

So `create_server(sock=...)`, the call uvicorn makes with Gunicorn's socket, returns a `BalancedServer`
instead: an idle worker accepts one connection per wake-up, and a worker that already has connections
waits a moment before it accepts (`ACCEPT_DELAY_PER_CONNECTION_S` per open connection, at most
`MAX_ACCEPT_DELAY_S`), so that a less busy worker, woken by the same connection, takes it first; after
the wait it takes up to `ACCEPTS_PER_WAKEUP` of the connections still waiting. When no other worker takes
them, the busy one does after the delay: nothing waits longer than `MAX_ACCEPT_DELAY_S` for a worker, and
nothing is refused (the kernel's listen backlog is unchanged). Accepted sockets are handed to the loop
with the public `connect_accepted_socket`, so the same server works on any asyncio loop.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import uvloop

from shared.logging import get_logger

__all__ = [
    "ACCEPTS_PER_WAKEUP",
    "ACCEPT_DELAY_PER_CONNECTION_S",
    "MAX_ACCEPT_DELAY_S",
    "BalancedAcceptEventLoop",
    "BalancedServer",
    "new_event_loop",
]

log = get_logger(__name__)

#: How long a worker lets the others go first, per connection it already has open.
ACCEPT_DELAY_PER_CONNECTION_S = 0.0001
#: The longest a busy worker waits before accepting a connection nobody else took.
MAX_ACCEPT_DELAY_S = 0.002
#: How many waiting connections a busy worker takes once its delay is over (an idle worker takes one). One
#: per loop iteration spread a 50-connection burst's accepts over ~75 ms (p95) on a busy loop, each late
#: connection starting its round trips late; 4 took ~30 ms, the split between two workers unchanged.
ACCEPTS_PER_WAKEUP = 4
#: After an accept error (e.g. out of file descriptors) stop accepting this long, as asyncio does.
_ACCEPT_PAUSE_AFTER_ERROR_S = 1.0
_EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class BalancedServer(asyncio.AbstractServer):
    """Serves `protocol_factory` on an already listening socket: one accept per wake-up when idle, a few
    after a short wait when busy.

    The socket stays the caller's: `close` stops accepting and leaves the open connections (and the
    socket) to their owners, as asyncio's `Server.close` does for the connections.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Any, sock: socket.socket) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sock = sock
        self._fd = sock.fileno()
        self._transports: set[asyncio.BaseTransport] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._watching = False
        self._serving = False
        self._closed = False
        self._closed_event = asyncio.Event()

    # -- asyncio.AbstractServer ------------------------------------------------------------------
    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server accepts on."""
        return self._loop

    def is_serving(self) -> bool:
        """True from `start_serving` until `close`."""
        return self._serving

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket (empty once closed)."""
        return () if self._closed else (self._sock,)

    async def start_serving(self) -> None:
        """Start accepting (idempotent)."""
        if self._serving or self._closed:
            return
        self._sock.setblocking(False)
        self._serving = True
        self._watch()

    async def serve_forever(self) -> None:
        """Accept until closed or cancelled."""
        await self.start_serving()
        try:
            await self._closed_event.wait()
        finally:
            self.close()

    def close(self) -> None:
        """Stop accepting; open connections are left to their protocols."""
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        self._serving = False
        self._unwatch()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None

    async def wait_closed(self) -> None:
        """Wait for connections that were being set up when the server closed."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- accepting ---------------------------------------------------------------------------------
    def open_connections(self) -> int:
        """Connections this server accepted that are still open."""
        self._transports = {t for t in self._transports if not t.is_closing()}
        return len(self._transports) + len(self._pending)

    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        busy = self.open_connections()
        if busy == 0:
            self._accept_one()
            return
        # Stop watching the socket for a moment (so this loop does not spin on it), then take a
        # connection if one is still waiting: the accept returns at once when another worker took it.
        self._unwatch()
        self._resume = self._loop.call_later(
            min(MAX_ACCEPT_DELAY_S, busy * ACCEPT_DELAY_PER_CONNECTION_S), self._resume_accepting
        )

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._closed:
            return
        self._watch()
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self._accept_one():
                break

    def _accept_one(self) -> bool:
        try:
            conn, _address = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False  # another worker took it, or the client gave up before we got to it
        except OSError as exc:
            # Out of descriptors or memory (or anything else the socket reports): pause instead of
            # spinning on a socket that stays readable; the kernel keeps the waiting connections.
            level = log.warning if exc.errno in _EXHAUSTION_ERRNOS else log.error
            level("server.accept_paused", error=errno.errorcode.get(exc.errno or 0, type(exc).__name__))
            self._unwatch()
            self._resume = self._loop.call_later(_ACCEPT_PAUSE_AFTER_ERROR_S, self._resume_accepting)
            return False
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _connect(self, conn: socket.socket) -> None:
        try:
            transport, _protocol = await self._loop.connect_accepted_socket(self._factory, sock=conn)
        except Exception as exc:  # a connection reset before it was set up: drop it, keep serving
            conn.close()
            log.debug("server.connection_setup_failed", error=type(exc).__name__)
            return
        self._transports.add(transport)


class BalancedAcceptEventLoop(uvloop.Loop):
    """uvloop whose `create_server` on an already listening socket returns a `BalancedServer`."""

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Any,
        host: Any = None,
        port: Any = None,
        *,
        sock: socket.socket | None = None,
        ssl: Any = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        """Gunicorn's socket (no TLS: Spaces terminate it in front): balanced; anything else: uvloop's."""
        if sock is None or ssl is not None or host is not None or port is not None:
            return await super().create_server(
                protocol_factory, host, port, sock=sock, ssl=ssl, start_serving=start_serving, **kwargs
            )
        server = BalancedServer(self, protocol_factory, sock)
        if start_serving:
            await server.start_serving()
        return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Loop factory for uvicorn's `loop` setting (an import string)."""
    return BalancedAcceptEventLoop()
