"""Streaming chat against 1 vs 2 API containers with the same total Gunicorn workers (issue 21).

Run: .venv/bin/python -m bench.scaleout [--clients 50 200] [--rounds 2] [--workers 2]

What it does (everything on this machine, the load generator included):
1. starts the fake OpenAI server as its own process (60 tokens x 25 ms = 1.5 s per answer, as bench.chat);
2. takes an empty database of the machine's Redis (LECTERN_TEST_REDIS) and a fresh PostgreSQL database
   (LECTERN_TEST_PG), and starts one `worker,store,watchdog` container (the embedded Qdrant, served over the
   Redis RPC); ingests ../shared/corpus through a first API container;
3. per round, alternately: ONE `api` container with WEB_CONCURRENCY=--workers, and TWO `api` containers with
   --workers/2 each (so the same number of Gunicorn workers, and of CPU-hungry processes, serve both);
   the clients of a burst are spread round-robin over the containers' ports (what a load balancer does);
   every worker is warmed first by two unmeasured bursts of 40 over new connections;
4. per level prints TTFT and completion p50/p95/max and errors (bench.chat's `report`), then a summary of
   every round and the 2-vs-1 ratios.

Each container is a `scripts/start` of its own (tests/utils/scaleout.py). No speed-up is expected on 2
cores: the point is zero errors and where the time goes (see docs/notes/scaleout.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid

import httpx
import psycopg

from bench.chat import QUESTIONS, Result, raw_stream, report, run_client
from tests.fakes.openai_server import free_port, spawn
from tests.utils.corpus import corpus_dir
from tests.utils.scaleout import Container, scratch_redis_db, wait_store_served
from tests.utils.stack import wait_for

PG_ADMIN_URL = os.environ.get("LECTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "bench-admin-" + uuid.uuid4().hex[:8]


async def spread_level(base_urls: list[str], clients: int) -> list[Result]:
    """`clients` streams at once, client i to base URL i mod len (round-robin, like a load balancer)."""
    start = asyncio.Event()
    tasks = []
    for i in range(clients):
        url = httpx.URL(base_urls[i % len(base_urls)])
        question = QUESTIONS[i % len(QUESTIONS)]
        tasks.append(asyncio.create_task(raw_stream(url.host, url.port or 80, question, start)))
    await asyncio.sleep(0.2)
    start.set()
    return list(await asyncio.gather(*tasks))


def ingest(api: Container) -> None:
    """The textbook through the API, waiting for the job."""
    corpus = corpus_dir()
    documents = [
        {"source": p.relative_to(corpus).as_posix(), "content": p.read_text(encoding="utf-8")}
        for p in sorted(corpus.rglob("*.md"))
    ]
    headers = {"X-API-Key": ADMIN_KEY}
    with api.client(timeout=60) as client:
        job_id = client.post("/api/ingest", json={"documents": documents}, headers=headers).json()["job_id"]

        def done() -> bool:
            status = client.get(f"/api/ingest/jobs/{job_id}", headers=headers).json()["status"]
            if status == "failed":
                raise RuntimeError("ingestion failed")
            return bool(status == "succeeded")

        wait_for(done, timeout=300, interval=0.5, message="ingestion")
    print(f"ingested {len(documents)} documents")


def main() -> None:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="total Gunicorn workers (even)")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--token-delay-ms", type=float, default=25.0)
    args = parser.parse_args()
    model_s = args.tokens * args.token_delay_ms / 1000

    port = free_port()
    fake = spawn(port, "--tokens", str(args.tokens), "--token-delay-ms", str(args.token_delay_ms), quiet=True)
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    db_name = f"lectern_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{db_name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    summaries: dict[str, list[dict[str, float | int]]] = {}
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200, timeout=20)
        reply = " ".join(["According to the book [1]"] + [f"word{i}" for i in range(args.tokens - 5)])
        httpx.post(f"http://127.0.0.1:{port}/_control", json={"reply": reply}, timeout=5).raise_for_status()
        with scratch_redis_db() as redis_url:
            env = {
                "REDIS_URL": redis_url,
                "DATABASE_URL": database_url,
                "OPENAI_API_KEY": "sk-bench-not-a-real-key",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                "ADMIN_API_KEY": ADMIN_KEY,
                "BETTER_AUTH_SECRET": "bench-shared-secret-" + "y" * 20,
                "RATE_LIMIT_CHAT": "1000000/minute",
                "AUTO_INGEST": "false",
                "LOG_LEVEL": "INFO",
                "LECTERN_STORE_WAIT": "120",
            }
            store = Container("bench-store", "worker,store,watchdog", env=env).start(timeout=180)
            try:
                wait_store_served(redis_url, timeout=180)
                shapes = {
                    "1 API container": [("bench-api", args.workers)],
                    "2 API containers": [("bench-api-a", args.workers // 2), ("bench-api-b", args.workers // 2)],
                }
                first = True
                for round_no in range(args.rounds):
                    for label, layout in shapes.items():
                        apis = [
                            Container(name, "api", env={**env, "WEB_CONCURRENCY": str(workers)})
                            for name, workers in layout
                        ]
                        try:
                            for api in apis:
                                api.start(wait=False)
                            for api in apis:
                                api.wait_healthy(timeout=180)
                            if first:
                                ingest(apis[0])
                                first = False
                            urls = [api.base_url for api in apis]
                            # Warm EVERY Gunicorn worker with every question (a fresh process computes the
                            # gate's passage vectors once): bursts over new connections, not one keep-alive
                            # client, which would warm a single worker of a container and leave the other cold.
                            for _ in range(2):
                                run_client(spread_level(urls, 40))
                            for level in args.clients:
                                results = run_client(spread_level(urls, level))
                                title = f"{label}, {sum(w for _, w in layout)} workers, round {round_no + 1}, {level}"
                                summary = report(title, results, model_s)
                                summaries.setdefault(f"{label} @ {level}", []).append(summary)
                        finally:
                            for api in apis:
                                api.cleanup()
            finally:
                store.cleanup()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
    print("\n== summary (median over rounds) ==")
    keys = ("errors", "ttft_p50_ms", "ttft_p95_ms", "total_p50_ms", "total_p95_ms")
    medians: dict[str, dict[str, float]] = {}
    for name, rounds in summaries.items():
        medians[name] = {k: statistics.median(float(r.get(k, float("nan"))) for r in rounds) for k in keys}
        print(f"  {name:28s} " + "  ".join(f"{k} {medians[name][k]:8.1f}" for k in keys))
    for level in args.clients:
        one, two = medians.get(f"1 API container @ {level}"), medians.get(f"2 API containers @ {level}")
        if one and two:
            ratios = "  ".join(f"{k} {two[k] / one[k]:.2f}" for k in keys[1:] if one[k])
            print(f"  ratio 2/1 @ {level}: {ratios}")


if __name__ == "__main__":
    main()
