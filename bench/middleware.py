"""What the security middleware costs: throughput with and without it, in the same run.

Two single-process Uvicorn servers run the same app built by `create_app`, sharing one SQLite database
and one Redis db: `full` (as deployed) and `bare` (the security stack removed: request context + access
log + security headers, CORS, body-size limit, unhandled-error envelope, and the Redis rate limit on the
limited route). A load generator (separate process, keep-alive connections) alternates between them,
round after round, on:

    GET /                 cheap, anonymous, through every middleware
    GET /health           the liveness probe (answered by the outermost fast path when deployed)
    GET /api/auth/verify  cheap authenticated endpoint (Bearer token, Redis session cache)
    POST /_bench/limited  authenticated + the chat rate limit dependency (one Redis EVALSHA)

    .venv/bin/python bench/middleware.py [--seconds 3] [--rounds 3] [--concurrency 16]

Needs Redis (LECTERN_BENCH_REDIS, default redis://127.0.0.1:6379/13). Prints requests/s per variant and
the relative cost of the stack; numbers go to docs/notes/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECURITY_MIDDLEWARE = {
    "RequestContextMiddleware",
    "EnvelopeCORSMiddleware",
    "BodySizeLimitMiddleware",
    "ErrorEnvelopeMiddleware",
}
ENDPOINTS = (
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/api/auth/verify"),
    ("POST", "/_bench/limited"),
)


def build_app(variant: str, data_dir: str, redis_url: str) -> Any:
    """The app of one variant: `full` as deployed, `bare` without the security middleware and limit."""
    from fastapi import FastAPI

    from api.deps import ChatRateLimitDep, CurrentUser
    from api.main import create_app
    from shared.platform.config import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        DATA_DIR=data_dir,
        REDIS_URL=redis_url,
        RATE_LIMIT_CHAT="100000000/minute",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )
    app: FastAPI = create_app(settings)

    async def limited(user: CurrentUser) -> dict[str, str]:
        return {"user": user.id}

    limited.__annotations__ = {"user": CurrentUser, "return": dict[str, str]}  # local alias, not a string

    deps = [ChatRateLimitDep] if variant == "full" else []
    app.add_api_route("/_bench/limited", limited, methods=["POST"], dependencies=deps)
    if variant == "bare":
        app.user_middleware[:] = [m for m in app.user_middleware if m.cls.__name__ not in SECURITY_MIDDLEWARE]
    return app


def serve(variant: str, port: int, data_dir: str, redis_url: str) -> None:
    """Run one variant in this process (child of the benchmark)."""
    import uvicorn

    app = build_app(variant, data_dir, redis_url)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, server_header=False, http="h11"
    )


async def _load(
    base: str, method: str, path: str, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, int]:
    import httpx

    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, headers=headers, timeout=10) as client:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                response = await client.request(method, path)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if errors:
        sample = httpx.request(method, base + path, headers=headers)
        raise RuntimeError(f"{errors} non-200 answers from {base}{path}: {sample.status_code} {sample.text[:300]}")
    return done / elapsed, done


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (immune to other processes' load, unlike wall-clock rates)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _asgi_cost(app: Any, method: str, path: str, headers: dict[str, str], n: int) -> float:
    """Microseconds per request calling the ASGI app directly (no sockets, no HTTP parsing)."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()] + [(b"host", b"bench")]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def scope() -> dict[str, Any]:
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw_headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip

    for _ in range(200):
        await app(scope(), receive, send)
    started = time.perf_counter()
    for _ in range(n):
        await app(scope(), receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"{path}: statuses {sorted(set(statuses))}")
    return elapsed / n * 1e6


async def asgi_table(data_dir: str, redis_url: str, token: str, n: int) -> None:
    """Print per-request microseconds of both variants, called in-process (the stack's pure CPU cost)."""
    apps = {v: build_app(v, data_dir, redis_url) for v in ("bare", "full")}
    headers = {"Authorization": f"Bearer {token}", "Origin": "http://localhost:3000"}
    async with apps["bare"].router.lifespan_context(apps["bare"]), apps["full"].router.lifespan_context(apps["full"]):
        print(f"in-process ASGI, min of 5 interleaved runs of {n} calls, microseconds per request")
        print(f"{'endpoint':<26}{'bare':>10}{'full':>10}{'added':>9}")
        for method, path in ENDPOINTS:
            samples: dict[str, list[float]] = {"bare": [], "full": []}
            for _ in range(5):  # interleaved, min of 5: other processes' load only ever adds time
                for variant, app in apps.items():
                    samples[variant].append(await _asgi_cost(app, method, path, headers, n))
            costs = {variant: min(values) for variant, values in samples.items()}
            print(
                f"{method + ' ' + path:<26}{costs['bare']:>10.0f}{costs['full']:>10.0f}{costs['full'] - costs['bare']:>8.0f}us"
            )


def _wait(port: int) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def main() -> None:
    """Start both variants, sign up a user, alternate load rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--variant", default="full")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    redis_url = os.environ.get("LECTERN_BENCH_REDIS", "redis://127.0.0.1:6379/13")
    if args.command == "serve":
        serve(args.variant, args.port, args.data_dir, redis_url)
        return

    import httpx

    from shared.platform.config import Settings
    from shared.stores.db.migrate import upgrade
    from tests.fakes.openai_server import free_port

    data_dir = tempfile.mkdtemp(prefix="lectern-bench-")
    upgrade(Settings(_env_file=None, DATA_DIR=data_dir, REDIS_URL=redis_url))  # type: ignore[call-arg]
    ports = {"full": free_port(), "bare": free_port()}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "serve", "--variant", v, "--port", str(p), "--data-dir", data_dir],
            cwd=REPO,
        )
        for v, p in ports.items()
    ]
    try:
        for port in ports.values():
            _wait(port)
        signup = httpx.post(
            f"http://127.0.0.1:{ports['full']}/api/auth/sign-up",
            json={"email": f"bench-{os.getpid()}@example.com", "name": "Bench", "password": "bench-password-1"},
        )
        signup.raise_for_status()
        auth = {"Authorization": f"Bearer {signup.json()['token']}", "Origin": "http://localhost:3000"}
        pids = {v: p.pid for v, p in zip(ports, procs, strict=True)}
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for method, path in ENDPOINTS:
            for _ in range(args.rounds):
                for variant, port in ports.items():
                    before = _cpu_seconds(pids[variant])
                    rate, count = asyncio.run(
                        _load(f"http://127.0.0.1:{port}", method, path, auth, args.seconds, args.concurrency)
                    )
                    used = _cpu_seconds(pids[variant]) - before
                    rates.setdefault((path, variant), []).append(rate)
                    cpu.setdefault((path, variant), []).append(used / count * 1e6)
        asyncio.run(asgi_table(data_dir, redis_url, signup.json()["token"], 2000))
        print()
        print(f"HTTP (uvicorn, one process each), concurrency {args.concurrency}, {args.rounds} alternating rounds")
        print(f"of {args.seconds:.0f} s; median req/s (load-sensitive) and server CPU per request (load-immune)")
        print(f"{'endpoint':<26}{'bare/s':>8}{'full/s':>8}{'bare CPU':>10}{'full CPU':>10}{'CPU cost':>10}")
        for method, path in ENDPOINTS:
            bare, full = (statistics.median(rates[(path, v)]) for v in ("bare", "full"))
            bare_cpu, full_cpu = (statistics.median(cpu[(path, v)]) for v in ("bare", "full"))
            print(
                f"{method + ' ' + path:<26}{bare:>8.0f}{full:>8.0f}{bare_cpu:>8.0f}us{full_cpu:>8.0f}us"
                f"{(full_cpu / bare_cpu - 1) * 100:>9.1f}%"
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
