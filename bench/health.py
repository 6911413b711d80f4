"""Foundation benchmark: /health through the whole supervisord stack vs a bare Uvicorn hello-world.

Run from the repo root: `.venv/bin/python -m bench.health [--duration 10] [--connections 50] [--rounds 2]`

Measures, in one run on loopback:
- cold start: `scripts/start` launched with an empty DATA_DIR -> first `/health` 200 (preflight, migrations,
  supervisord, Redis, 2 Gunicorn/Uvicorn workers);
- idle memory of every process of the stack (start script, FIFO readers, supervisord, redis, gunicorn
  master + workers, arq worker) after a few idle seconds: RSS summed (counts shared pages once per
  process, so it overstates) and PSS summed (shared pages split between processes: the real footprint);
- `/health` throughput and latency with 50 keep-alive connections, through the stack (WEB_CONCURRENCY=2)
  and through a bare Uvicorn hello-world with 2 workers answering the same bytes, alternately, `--rounds`
  times, keeping each side's best round. Load comes from `wrk` when installed (`apt-get install wrk`),
  otherwise from the asyncio load generator below (same connection count).

Targets (issue 2): ratio >= 0.8, p99 < 20 ms, cold start < 10 s, idle memory < 600 MB.
Results are printed and written to bench/results/health.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_server import free_port
from tests.utils.stack import REPO, Stack, runtime_python, wait_for

HELLO_APP = """
# A bare Uvicorn hello-world served the way Gunicorn serves the stack: one listening socket made by a
# parent process and shared by N forked Uvicorn servers (no Gunicorn, no supervisord, no FastAPI).
import os
import socket
import sys

import uvicorn

BODY = b'{"status":"healthy"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    for _ in range(workers):
        if os.fork() == 0:
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http="h11")
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
"""


@dataclass
class LoadResult:
    """One load run."""

    tool: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


# ---- load generation ---------------------------------------------------------------------------
def _ms(value: str) -> float:
    number = float(re.sub(r"[a-z]+$", "", value))
    unit = re.sub(r"^[\d.]+", "", value)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, *, connections: int, duration: float) -> LoadResult:
    """wrk -t2 -cN -dS --latency URL, parsed."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return LoadResult("wrk", rps, p50, p99, errors)


async def _connection(host: str, port: int, path: str, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    errors = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


def run_asyncio_load(url: str, *, connections: int, duration: float) -> LoadResult:
    """A keep-alive HTTP/1.1 load generator: `connections` concurrent clients for `duration` seconds."""
    parsed = httpx.URL(url)
    latencies: list[float] = []

    async def main() -> int:
        deadline = time.perf_counter() + duration
        results = await asyncio.gather(
            *(_connection(parsed.host, parsed.port or 80, parsed.path, deadline, latencies) for _ in range(connections))
        )
        return sum(results)

    started = time.perf_counter()
    errors = asyncio.run(main())
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult("python-asyncio", len(latencies) / elapsed, pct(0.50), pct(0.99), errors)


def load(url: str, *, connections: int, duration: float) -> LoadResult:
    """wrk when installed, else the asyncio generator."""
    if shutil.which("wrk"):
        return run_wrk(url, connections=connections, duration=duration)
    return run_asyncio_load(url, connections=connections, duration=duration)


# ---- processes ---------------------------------------------------------------------------------
def session_pids(sid: int) -> list[int]:
    """Every process in the session `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def memory_kib(pid: int) -> tuple[int, int, str]:
    """(RSS KiB, PSS KiB, command) of a process."""
    base = Path(f"/proc/{pid}")
    rss = pss = 0
    for line in (base / "smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    cmd = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return rss, pss, cmd


def start_baseline(port: int, python: str, workers: int) -> tuple[subprocess.Popen[bytes], Path]:
    """A bare Uvicorn serving the hello-world ASGI app with `workers` processes."""
    folder = Path(tempfile.mkdtemp(prefix="lectern-hello-"))
    (folder / "hello.py").write_text(HELLO_APP, encoding="utf-8")
    # Not `uvicorn --workers N`: its spawned workers get sockets without TCP_NODELAY (every response
    # then waits ~40 ms for a delayed ACK), which would flatter the stack. Forked servers sharing one
    # socket are what Gunicorn does too.
    proc = subprocess.Popen(
        [python, "hello.py", str(port), str(workers)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/health"
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, timeout=30, message="baseline up")
    return proc, folder


def stop_baseline(proc: subprocess.Popen[bytes], folder: Path) -> None:
    """SIGTERM the baseline's process group and remove its folder."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


# ---- the benchmark -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="alternating stack/baseline rounds")
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY and baseline workers")
    parser.add_argument("--idle", type=float, default=8.0, help="idle seconds before measuring memory")
    args = parser.parse_args(argv)
    python = runtime_python()
    results: dict[str, Any] = {"connections": args.connections, "duration_s": args.duration, "cpus": os.cpu_count()}

    stack = Stack(env={"WEB_CONCURRENCY": str(args.workers), "LOG_FORMAT": "json"}, python=python)
    started = time.monotonic()
    stack.start(wait=False)
    try:
        stack.wait_healthy(timeout=60)
        results["cold_start_s"] = round(time.monotonic() - started, 2)
        wait_for(
            lambda: all(stack.program_states().get(p, ("?",))[0] == "RUNNING" for p in ("redis", "api", "worker")),
            timeout=30,
            message="programs RUNNING",
        )
        time.sleep(args.idle)
        assert stack.proc is not None
        rows = [(pid, *memory_kib(pid)) for pid in sorted(session_pids(stack.proc.pid))]
        results["idle_processes"] = [{"pid": p, "rss_kib": r, "pss_kib": s, "cmd": c[:90]} for p, r, s, c in rows]
        results["idle_rss_mb"] = round(sum(r for _, r, _, _ in rows) / 1024, 1)
        results["idle_pss_mb"] = round(sum(s for _, _, s, _ in rows) / 1024, 1)

        port = free_port()
        baseline, folder = start_baseline(port, python, args.workers)
        try:
            stack_url, base_url = stack.url("/health"), f"http://127.0.0.1:{port}/health"
            for url in (stack_url, base_url):  # warm-up
                load(url, connections=args.connections, duration=2)
            stack_runs, base_runs = [], []
            for _ in range(args.rounds):
                stack_runs.append(load(stack_url, connections=args.connections, duration=args.duration))
                base_runs.append(load(base_url, connections=args.connections, duration=args.duration))
        finally:
            stop_baseline(baseline, folder)
    finally:
        stack.cleanup()

    best_stack = max(stack_runs, key=lambda r: r.requests_per_s)
    best_base = max(base_runs, key=lambda r: r.requests_per_s)
    results["stack"] = asdict(best_stack)
    results["baseline"] = asdict(best_base)
    results["stack_runs"] = [asdict(r) for r in stack_runs]
    results["baseline_runs"] = [asdict(r) for r in base_runs]
    results["ratio"] = round(best_stack.requests_per_s / best_base.requests_per_s, 3)

    print(
        f"load tool: {best_stack.tool}, {args.connections} connections, {args.duration:.0f} s per run, "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in (("stack /health", best_stack), ("bare uvicorn hello", best_base)):
        print(f"{name:24}{r.requests_per_s:>10.0f}{r.p50_ms:>10.2f}{r.p99_ms:>10.2f}{r.errors:>8}")
    print(f"ratio stack/baseline: {results['ratio']:.2f} (target >= 0.8); stack p99 {best_stack.p99_ms:.2f} ms (< 20)")
    print(f"cold start to first healthy /health: {results['cold_start_s']:.2f} s (target < 10)")
    print(
        f"idle memory, {len(results['idle_processes'])} processes: RSS sum {results['idle_rss_mb']} MB, "
        f"PSS sum {results['idle_pss_mb']} MB (target < 600)"
    )
    for row in results["idle_processes"]:
        print(
            f"  {row['pid']:>7} rss {row['rss_kib'] / 1024:6.1f} MB pss {row['pss_kib'] / 1024:6.1f} MB  {row['cmd']}"
        )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "health.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
