"""Prometheus metrics, merged across processes (prometheus-client multiprocess mode).

`scripts/start` sets `PROMETHEUS_MULTIPROC_DIR=$DATA_DIR/run/metrics` (wiped at every start) for every
program, so each Gunicorn worker and the arq worker write their samples to files there and
`render()` (GET /metrics) merges all of them. Without the variable (in-process tests, the CLI) the
metrics live in this process's default registry and `render()` shows just that.

Recording functions never raise: metrics must not break a request or a job.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

__all__ = [
    "CONTENT_TYPE_LATEST",
    "observe_job",
    "observe_request",
    "observe_upstream",
    "record_breaker_transition",
    "record_rejected",
    "record_retry",
    "render",
    "track_job",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Numeric encoding of breaker states in `lectern_circuit_state` (higher is worse).
STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0)

HTTP_REQUESTS = Counter(
    "lectern_http_requests_total", "HTTP requests by route template and status.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "lectern_http_request_duration_seconds",
    "Time to the end of the response body, by route template.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
CIRCUIT_STATE = Gauge(
    "lectern_circuit_state",
    "Breaker state, worst over live processes: 0 closed, 1 half_open, 2 open.",
    ["upstream"],
    multiprocess_mode="livemax",
)
CIRCUIT_TRANSITIONS = Counter(
    "lectern_circuit_transitions_total", "Breaker state changes.", ["upstream", "from_state", "to_state"]
)
CIRCUIT_REJECTED = Counter(
    "lectern_circuit_rejected_total", "Calls refused at once because the breaker was open.", ["upstream"]
)
UPSTREAM_RETRIES = Counter("lectern_upstream_retries_total", "Retries performed (after backoff).", ["upstream"])
UPSTREAM_LATENCY = Histogram(
    "lectern_upstream_call_duration_seconds",
    "Upstream calls through the breaker, retries included, by outcome (success|failure|rejected).",
    ["upstream", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
JOBS = Counter("lectern_jobs_total", "Background jobs by function and outcome.", ["job", "status"])
JOB_DURATION = Histogram(
    "lectern_job_duration_seconds",
    "Background job run time by function and outcome.",
    ["job", "status"],
    buckets=_JOB_BUCKETS,
)
WATCHDOG_RESTARTS = Counter("lectern_watchdog_restarts_total", "Worker restarts by the watchdog.", ["reason"])


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):
            fn(*args, **kwargs)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_safe
def observe_request(method: str, route: str, status: int, duration_s: float) -> None:
    """Count one HTTP request and its latency (route is the template, e.g. /api/chat/sessions/{session_id})."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(duration_s)


@_safe
def record_breaker_transition(upstream: str, previous: str, state: str) -> None:
    """Count a breaker transition and set this process's state gauge."""
    CIRCUIT_TRANSITIONS.labels(upstream, previous, state).inc()
    CIRCUIT_STATE.labels(upstream).set(STATE_VALUE.get(state, 0.0))


@_safe
def set_breaker_state(upstream: str, state: str) -> None:
    """Set this process's state gauge (the heartbeat calls it so every process has a sample)."""
    CIRCUIT_STATE.labels(upstream).set(STATE_VALUE.get(state, 0.0))


@_safe
def record_rejected(upstream: str) -> None:
    """Count a call refused by an open breaker."""
    CIRCUIT_REJECTED.labels(upstream).inc()


@_safe
def record_retry(upstream: str) -> None:
    """Count one retry of an upstream call."""
    UPSTREAM_RETRIES.labels(upstream).inc()


@_safe
def observe_upstream(upstream: str, outcome: str, duration_s: float) -> None:
    """Record an upstream call's total time (retries included) and outcome."""
    UPSTREAM_LATENCY.labels(upstream, outcome).observe(duration_s)


@_safe
def observe_job(job: str, status: str, duration_s: float) -> None:
    """Record a finished job run: status is succeeded | failed | retried | cancelled."""
    JOBS.labels(job, status).inc()
    JOB_DURATION.labels(job, status).observe(duration_s)


@_safe
def record_watchdog_restart(reason: str) -> None:
    """Count a worker restart performed by the watchdog."""
    WATCHDOG_RESTARTS.labels(reason).inc()


@contextlib.contextmanager
def track_job(job: str) -> Iterator[None]:
    """Time a job body and record its outcome (arq `Retry` counts as `retried`, cancellation as `cancelled`)."""
    started = time.monotonic()
    status = "succeeded"
    try:
        yield
    except BaseException as exc:
        name = type(exc).__name__
        status = "retried" if name == "Retry" else "cancelled" if name == "CancelledError" else "failed"
        raise
    finally:
        observe_job(job, status, time.monotonic() - started)


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_processes(directory: Path) -> None:
    """Drop live-gauge files of processes that exited (restarted Gunicorn or arq workers)."""
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(Exception):
                _multiprocess.mark_process_dead(int(match.group(1)), str(directory))


def render() -> tuple[bytes, str]:
    """Prometheus text of every process (multiprocess mode) or of this one; (body, content type)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and Path(directory).is_dir():
        _forget_dead_processes(Path(directory))
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def instrument_jobs(functions: list[Any]) -> list[Any]:
    """Wrap arq job functions (coroutines or `arq.worker.Function`s) so each run is counted and timed."""
    import dataclasses
    import functools

    from arq.worker import Function, func

    wrapped: list[Any] = []
    for item in functions:
        function = item if isinstance(item, Function) else func(item)
        coroutine = function.coroutine

        def make(name: str, inner: Any) -> Any:
            @functools.wraps(inner)
            async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
                with track_job(name):
                    return await inner(ctx, *args, **kwargs)

            return run

        wrapped.append(dataclasses.replace(function, coroutine=make(function.name, coroutine)))
    return wrapped
