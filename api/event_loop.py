"""The event loop of the Gunicorn workers: a burst of new connections is shared by the workers.

Every worker listens on the one socket the Gunicorn master opened, and the kernel wakes all of them when a
connection arrives. asyncio then accepts up to `backlog` (2,048) connections in one go, so the first worker
to run takes the whole burst: in `bench.chat`, 36 to 50 of 50 simultaneous streams landed on one of the
two workers while the other sat idle. Here a worker accepts one connection per wake-up, and a worker that
already has connections waits a moment before it accepts (`ACCEPT_DELAY_PER_CONNECTION_S` per open
connection, at most `MAX_ACCEPT_DELAY_S`), so that a less busy worker, woken by the same connection,
takes it first. When no other worker takes it, the busy one does after the delay: nothing waits longer
than `MAX_ACCEPT_DELAY_S` for a worker, and nothing is refused (the kernel's listen backlog is unchanged).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ACCEPT_DELAY_PER_CONNECTION_S", "MAX_ACCEPT_DELAY_S", "BalancedAcceptEventLoop", "new_event_loop"]

#: How long a worker lets the others go first, per connection it already has open.
ACCEPT_DELAY_PER_CONNECTION_S = 0.0001
#: The longest a busy worker waits before accepting a connection nobody else took.
MAX_ACCEPT_DELAY_S = 0.002


class BalancedAcceptEventLoop(asyncio.SelectorEventLoop):
    """`asyncio.SelectorEventLoop` whose servers accept one connection per wake-up, later when busier."""

    def _accept_connection(
        self,
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        accept = super()._accept_connection  # type: ignore[misc]
        open_connections = int(getattr(server, "_active_count", 0) or 0)
        if open_connections == 0:
            accept(protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)
            return
        # Stop watching the socket for a moment (so this loop does not spin on it), then take a
        # connection if one is still waiting: `accept` returns at once when another worker took it.
        fd = sock.fileno()
        self._remove_reader(fd)  # type: ignore[attr-defined]

        def resume() -> None:
            if sock.fileno() != fd:  # the server closed meanwhile
                return
            self._add_reader(  # type: ignore[attr-defined]
                fd, self._accept_connection, protocol_factory, sock, sslcontext, server, backlog, *args, **kwargs
            )
            accept(protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)

        self.call_later(min(MAX_ACCEPT_DELAY_S, open_connections * ACCEPT_DELAY_PER_CONNECTION_S), resume)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Loop factory for uvicorn's `loop` setting (an import string)."""
    return BalancedAcceptEventLoop()
