"""Worker watchdog: a supervisord event listener that restarts a *hung* arq worker.

supervisord already restarts a worker that crashes; a worker that hangs (a blocked event loop, a
deadlock, a SIGSTOP) keeps its pid and would be left alone. The worker's event loop refreshes its own
row in Redis every second (`lectern:circuit:proc:<host>:worker:<pid>`, TTL 5 s, written by
`shared.platform.circuit_state`); when that key has been missing for `WATCHDOG_STALE_S` seconds while
supervisord says the worker is RUNNING (or, for a worker that never wrote the key since it started,
`WATCHDOG_STARTUP_GRACE_S` after its start), the watchdog SIGKILLs it and supervisord's `autorestart`
starts a new one. The key names this container's host and this worker's pid: arq's health-check key is
one for the whole queue, so with several worker containers on one Redis it stays fresh while any of them
lives and would hide a hung worker here.
(SIGKILL, because a stopped process cannot act on SIGTERM; arq puts its unfinished jobs back on the
queue when their in-progress marker expires.) If Redis itself cannot be read, nothing is restarted:
that is not the worker's fault.

supervisord runs it as the `watchdog` program (`events=TICK_5`); it speaks the event-listener protocol
on stdin/stdout and logs to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from shared.platform.config import Settings, load_settings
from shared.platform.constants import CIRCUIT_PROCESS_KEY, ROLE_WORKER

PROGRAM = "worker"
RUNNING = 20  # supervisord ProcessStates.RUNNING


@dataclass
class Watchdog:
    """The decision logic, separate from the protocol and the clients (so it can be tested)."""

    stale_s: float = 20.0
    startup_grace_s: float = 90.0
    missing_since: float | None = None
    seen_alive: bool = False
    watched_pid: int | None = None
    log: list[str] = field(default_factory=list)

    def decide(self, *, now: float, state: int, pid: int, started_at: float, key_present: bool | None) -> bool:
        """True when the worker should be killed. `key_present=None` means Redis could not be read.

        Until the key has been seen for this pid, the worker is still starting (imports, opening the
        store): it gets `startup_grace_s` from its start. After that, `stale_s` without the key.
        """
        if state != RUNNING or pid != self.watched_pid:
            self.watched_pid = pid if state == RUNNING else None
            self.missing_since = None
            self.seen_alive = False
            if state != RUNNING:
                return False
        if key_present is None:
            return False
        if key_present:
            self.seen_alive = True
            self.missing_since = None
            return False
        if not self.seen_alive:
            return now - started_at >= self.startup_grace_s
        if self.missing_since is None:
            self.missing_since = now
        return now - self.missing_since >= self.stale_s


def _log(stream: TextIO, event: str, **fields: Any) -> None:
    stream.write(json.dumps({"event": event, "logger": "worker.watchdog", "role": "watchdog", **fields}) + "\n")
    stream.flush()


def _redis_client(settings: Settings) -> Any:
    import redis

    url = settings.effective_redis_url
    if url.startswith("unix://"):
        return redis.Redis(unix_socket_path=url[len("unix://") :], socket_timeout=2, socket_connect_timeout=2)
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _key_present(client: Any, key: str) -> bool | None:
    try:
        return bool(client.exists(key))
    except Exception:
        return None


def run(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> None:
    """The event-listener loop: READY, read one event, check, answer OK; forever."""
    from supervisor import childutils

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # supervisord's stop: exit cleanly
    settings = load_settings()
    rpc = childutils.getRPCInterface(os.environ)  # supervisord's own SUPERVISOR_SERVER_URL
    client = _redis_client(settings)
    dog = Watchdog(stale_s=settings.watchdog_stale_s, startup_grace_s=settings.watchdog_startup_grace_s)
    _log(stderr, "watchdog.started", stale_s=dog.stale_s, startup_grace_s=dog.startup_grace_s)
    while True:
        headers, _payload = childutils.listener.wait(stdin, stdout)
        try:
            if headers.get("eventname", "").startswith("TICK"):
                info = rpc.supervisor.getProcessInfo(PROGRAM)
                now = time.time()
                key = CIRCUIT_PROCESS_KEY.format(host=settings.hostname, role=ROLE_WORKER, pid=int(info["pid"]))
                present = _key_present(client, key)
                if dog.decide(
                    now=now,
                    state=int(info["state"]),
                    pid=int(info["pid"]),
                    started_at=float(info["start"]),
                    key_present=present,
                ):
                    stale_for = round(now - (dog.missing_since or now), 1)
                    _log(stderr, "watchdog.worker_hung", pid=info["pid"], stale_for_s=stale_for, action="SIGKILL")
                    rpc.supervisor.signalProcess(PROGRAM, "KILL")
                    dog.missing_since = None
                    from shared.platform.metrics import record_watchdog_restart

                    record_watchdog_restart("health_check_stale")
        except Exception as exc:
            _log(stderr, "watchdog.check_failed", error=type(exc).__name__)
        childutils.listener.ok(stdout)


if __name__ == "__main__":
    run()
