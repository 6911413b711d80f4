"""The Gunicorn workers' event loop (uvloop) shares a burst of new connections between processes, refuses
none, still accepts every connection when it is the only worker, and stops accepting when closed (real
sockets, forked processes)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import signal
import socket
import time
from collections import Counter

import pytest
import uvloop

from api.event_loop import (
    ACCEPTS_PER_WAKEUP,
    MAX_ACCEPT_DELAY_S,
    BalancedAcceptEventLoop,
    BalancedServer,
    new_event_loop,
)


class _Hold(asyncio.Protocol):
    """Answers the accepting process's pid, then keeps the connection open (like a stream in flight)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(f"{os.getpid()}\n".encode())  # type: ignore[attr-defined]  # uvloop's TCPTransport


def _serve(listener: socket.socket) -> None:
    loop = BalancedAcceptEventLoop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(_Hold, sock=listener, backlog=2048))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()


def _burst(port: int, count: int) -> list[str]:
    """Open `count` connections at once (non-blocking connects, as a crowd of readers would), then read
    which process accepted each."""
    clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        for client in clients:
            client.settimeout(10)
        return [client.makefile().readline().strip() for client in clients]
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _start(listener: socket.socket, workers: int) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("fork")
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(target=_serve, args=(listener,), daemon=True) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    time.sleep(0.5)  # both loops are waiting on the socket
    return processes


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()


def test_two_workers_share_a_burst(listener: socket.socket) -> None:
    """50 connections opened at once: each of two workers takes at least a third of them."""
    processes = _start(listener, 2)
    try:
        pids = Counter(_burst(listener.getsockname()[1], 50))
    finally:
        _stop(processes)
    assert sum(pids.values()) == 50
    assert set(pids) == {str(p.pid) for p in processes}, pids
    assert min(pids.values()) >= 50 // 3, pids


def test_a_lone_busy_worker_accepts_everything(listener: socket.socket) -> None:
    """With no other worker to defer to, every connection is still accepted, each within the delay cap."""
    processes = _start(listener, 1)
    try:
        started = time.monotonic()
        pids = Counter(_burst(listener.getsockname()[1], 60))
        elapsed = time.monotonic() - started
    finally:
        _stop(processes)
    assert pids == Counter({str(processes[0].pid): 60})
    assert elapsed < 60 * MAX_ACCEPT_DELAY_S + 5  # bounded wait, generous for a loaded machine


def test_a_closed_server_keeps_its_connections_and_accepts_no_more(listener: socket.socket) -> None:
    """`close()` (uvicorn's first step of a graceful shutdown) stops accepting, and the streams already
    open stay open for their handlers to finish."""
    loop = new_event_loop()
    assert isinstance(loop, uvloop.Loop)
    port = listener.getsockname()[1]

    async def scenario() -> tuple[str, bytes | None, bool]:
        server = await loop.create_server(_Hold, sock=listener, backlog=2048)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        server.close()
        await server.wait_closed()
        try:  # the open connection is neither closed nor answered again
            still_open = await asyncio.wait_for(reader.read(1), 0.3)
        except TimeoutError:
            still_open = None
        writer.close()  # now this worker has nothing open: it would accept at once if it still listened
        await asyncio.sleep(0.1)
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", port)  # the kernel's backlog
        try:
            await asyncio.wait_for(late_reader.readline(), 0.5)
            late_answered = True
        except TimeoutError:
            late_answered = False
        late_writer.close()
        return first, still_open, late_answered

    try:
        first, still_open, late_answered = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert first == str(os.getpid())
    assert still_open is None
    assert late_answered is False


def _serve_out_of_descriptors(listener: socket.socket, report: int, spare_fds: int) -> None:
    """A worker allowed only `spare_fds` more descriptors: it runs out while connections wait."""
    loop = BalancedAcceptEventLoop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(_Hold, sock=listener, backlog=2048))
    open_fds = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds + spare_fds, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    started = time.process_time()

    def done() -> None:
        os.write(report, f"{time.process_time() - started:.3f}\n".encode())
        loop.stop()

    loop.call_later(2.0, done)
    loop.run_forever()


def test_a_worker_out_of_descriptors_pauses_instead_of_spinning(listener: socket.socket) -> None:
    """EMFILE on accept: the worker stops watching the socket for a while (as asyncio's server does)
    rather than waking on it in a loop, and keeps the connections it has."""
    read_end, write_end = os.pipe()
    context = multiprocessing.get_context("fork")
    process = context.Process(target=_serve_out_of_descriptors, args=(listener, write_end, 3), daemon=True)
    process.start()
    os.close(write_end)
    time.sleep(0.5)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(10)]
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", listener.getsockname()[1]))
        with os.fdopen(read_end) as report:
            cpu_s = float(report.readline())
        answered = 0
        for client in clients:
            client.settimeout(0.2)
            with contextlib.suppress(OSError):
                answered += bool(client.recv(64))
    finally:
        for client in clients:
            client.close()
        _stop([process])
    assert 1 <= answered <= 3  # it accepted what its descriptors allowed
    assert cpu_s < 0.5  # ~2 s of waiting connections did not keep it busy


def test_a_busy_worker_takes_several_waiting_connections_per_wake_up(listener: socket.socket) -> None:
    """Once its delay is over, a busy worker accepts up to ACCEPTS_PER_WAKEUP of the connections waiting,
    not one per loop iteration (40 waiting: about a quarter as many delayed wake-ups as connections)."""
    loop = new_event_loop()
    port = listener.getsockname()[1]

    async def scenario() -> tuple[int, int]:
        server = await loop.create_server(_Hold, sock=listener, backlog=2048)
        assert isinstance(server, BalancedServer)
        wake_ups = 0
        resume = server._resume_accepting

        def counted() -> None:
            nonlocal wake_ups
            wake_ups += 1
            resume()

        server._resume_accepting = counted  # type: ignore[method-assign]
        clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(40)]
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        deadline = loop.time() + 10
        while server.open_connections() < 40 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        accepted = server.open_connections()
        for client in clients:
            client.close()
        server.close()
        return accepted, wake_ups

    try:
        accepted, wake_ups = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert accepted == 40
    assert ACCEPTS_PER_WAKEUP > 1
    assert wake_ups <= 40 // ACCEPTS_PER_WAKEUP + 3, wake_ups
