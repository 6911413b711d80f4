"""Ingestion benchmark: the textbook replicated N times (distinct sources) through a real arq worker.

Run from the repo root: `.venv/bin/python -m bench.ingest [--copies 10] [--latency-ms 50] [--dims 1536]`

Set-up, all real except the embeddings server: a private redis-server on a unix socket, SQLite and Qdrant
the embedded Qdrant in a temp DATA_DIR, `python -m worker run` as its own process (it owns the local store), and
the fake OpenAI server as its own process (`python -m tests.fakes.openai_server`, 1536-dim vectors, 50 ms
per request). The job is submitted with `shared.ingestion.pipeline.submit_ingest`, the same code path as
`POST /api/ingest`; the clock runs from submit to the job's `finished_at`.

Reports wall time, chunks/s, tokens/s (tokens estimated as characters / 4), embedding requests, peak
worker RSS (VmHWM), and afterwards the round trip of the embedded-mode vector store RPC (hybrid query
over the ingested collection, and a bare count) as an API worker sees it. Targets (issue 3): >= 60,000 tokens/s, requests <= ceil(chunks/100) + 1%, RSS < 500 MB.
Results are printed and written to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from shared.ingestion.inputs import DocumentInput
from shared.ingestion.jobs import get_job, submit_ingest
from shared.platform.clients import create_redis
from shared.platform.config import Settings
from shared.stores.db.engine import create_engine, create_session_factory
from shared.stores.db.migrate import upgrade
from shared.stores.sparse import encode_query
from shared.stores.vectorstore import RemoteVectorStore
from tests.fakes.openai_server import fake_embedding, free_port, spawn
from tests.utils.corpus import corpus_dir
from tests.utils.stack import wait_for

REPO = Path(__file__).resolve().parents[1]
CORPUS = corpus_dir()


def corpus(copies: int) -> list[DocumentInput]:
    """The textbook `copies` times, each copy under its own source prefix."""
    files = sorted(CORPUS.rglob("*.md"))
    return [
        DocumentInput(source=f"copy{k:02d}/{p.relative_to(CORPUS).as_posix()}", content=p.read_text(encoding="utf-8"))
        for k in range(copies)
        for p in files
    ]


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def rpc_latency(settings: Settings, redis: Any, *, dims: int, rounds: int = 200) -> dict[str, Any]:
    """Round trips of the embedded-mode vector store RPC (what every API worker pays per search)."""
    store = RemoteVectorStore(settings, redis=redis)
    questions = ["How do ROS 2 nodes publish topics?", "What is sim-to-real transfer?", "humanoid balance control"]
    query_ms: list[float] = []
    count_ms: list[float] = []
    for i in range(rounds):
        text = questions[i % len(questions)]
        started = time.perf_counter()
        await store.query(dense=fake_embedding(text, dims), sparse=encode_query(text), limit=5)
        query_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await store.count()
        count_ms.append((time.perf_counter() - started) * 1000)
    return {
        "rpc_hybrid_query_ms_p50": _percentile(query_ms, 0.5),
        "rpc_hybrid_query_ms_p99": _percentile(query_ms, 0.99),
        "rpc_count_ms_p50": _percentile(count_ms, 0.5),
        "rpc_count_ms_p99": _percentile(count_ms, 0.99),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, ingest, measure, stop."""
    tmp = Path(tempfile.mkdtemp(prefix="lectern-bench-ingest-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    socket_path = tmp / "redis.sock"
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                ["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        )
        fake = spawn(port, "--latency-ms", str(args.latency_ms))
        procs.append(fake)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "DATA_DIR": str(data_dir),
            "REDIS_URL": f"unix://{socket_path}",
            "OPENAI_API_KEY": "sk-bench-000000",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "EMBEDDING_DIMENSIONS": str(args.dims),
            "EMBED_RPM": "100000",
            "EMBED_TPM": "100000000",
            "AUTO_INGEST": "false",
            "LOG_LEVEL": "WARNING",
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if k not in {"PATH", "PYTHONPATH"}}
        settings = Settings(_env_file=None, **values)
        await asyncio.to_thread(upgrade, settings)
        wait_for(socket_path.exists, timeout=10, message="redis socket")
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200,
            timeout=20,
            message="fake OpenAI server",
        )
        worker = subprocess.Popen([sys.executable, "-m", "worker", "run"], cwd=REPO, env=env)
        procs.append(worker)
        redis = await create_redis(settings)
        wait_for(lambda: settings.qdrant_path.exists(), timeout=30, message="worker store")
        await asyncio.sleep(1.0)
        engine = create_engine(settings)
        sessions = create_session_factory(engine)
        documents = corpus(args.copies)
        characters = sum(len(d.content) for d in documents)
        started = time.monotonic()
        job = await submit_ingest(sessions=sessions, redis=redis, documents=documents)
        while True:
            job = await get_job(sessions=sessions, job_id=job.id)
            if job.status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        wall = time.monotonic() - started
        rss = peak_rss_mb(worker.pid)
        recorded = httpx.get(f"http://127.0.0.1:{port}/_requests", timeout=30).json()["requests"]
        requests = sum(1 for r in recorded if r["path"].endswith("/embeddings"))
        chunks = job.chunks_upserted
        tokens = characters / 4
        result = {
            "documents": len(documents),
            "bytes": characters,
            "status": job.status,
            "errors": len(job.errors or []),
            "chunks": chunks,
            "tokens_estimated": int(tokens),
            "wall_s": round(wall, 2),
            "chunks_per_s": round(chunks / wall, 1),
            "tokens_per_s": round(tokens / wall),
            "embedding_requests": requests,
            "ideal_requests": math.ceil(chunks / 100),
            "peak_worker_rss_mb": round(rss, 1),
            "latency_ms": args.latency_ms,
            "dims": args.dims,
            "copies": args.copies,
        }
        result.update(await rpc_latency(settings, redis, dims=args.dims))
        await redis.aclose()  # type: ignore[attr-defined]
        await engine.dispose()
        return result
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    """Parse arguments, run, print and save the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--dims", type=int, default=1536)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    targets = {
        "tokens_per_s >= 60000": result["tokens_per_s"] >= 60_000,
        "requests <= ceil(chunks/100) + 1%": result["embedding_requests"] <= result["ideal_requests"] * 1.01 + 1,
        "peak worker RSS < 500 MB": result["peak_worker_rss_mb"] < 500,
        "RPC hybrid query p99 < 50 ms": result["rpc_hybrid_query_ms_p99"] < 50,
    }
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
