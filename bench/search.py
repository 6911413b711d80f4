"""Search benchmark: what one hybrid query costs the worker's store (the embedded Qdrant Edge shard), in-process.

Run from the repo root: `.venv/bin/python -m bench.search [--copies 1 10] [--questions 50] [--rounds 3]`

Offline settings (no OPENAI_API_KEY): the dense vectors are the bundled e5 model's (384 dimensions),
the sparse ones BM25, as embedded mode indexes them. For each `--copies` N the textbook (`../shared/corpus`,
or LECTERN_CORPUS_DIR) is ingested N times under distinct sources with the ingestion service in-process
(`submit_ingest` then `run_ingest_job`, what the arq worker runs) into a fresh temp DATA_DIR (SQLite +
embedded Qdrant), with worker-role services. The questions are the quality set's (`bench/quality_set.json`:
in-book questions, then off-topic ones); each question's dense and BM25 vectors are computed once, then
`store.query(dense=, sparse=, limit=RETRIEVAL_TOP_K * CANDIDATE_FACTOR)` (the call the chat's retrieval makes,
answered on the store thread) is timed: one warm-up pass, then `--rounds` passes over every question.

Prints p50/p95/mean ms per query for each corpus size and writes bench/results/search.json. Needs the
machine's Redis (LECTERN_TEST_REDIS, default redis://127.0.0.1:6379; a scratch db is used and flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from shared.answers.retrieval import CANDIDATE_FACTOR
from shared.ingestion.inputs import DocumentInput
from shared.ingestion.jobs import submit_ingest
from shared.ingestion.pipeline import run_ingest_job
from shared.platform.clients import build_services
from shared.platform.config import Settings
from shared.platform.constants import ROLE_WORKER
from shared.platform.logging import configure_logging
from shared.stores.db.migrate import upgrade
from shared.stores.sparse import encode_query
from tests.conftest import REDIS_TEST_URL
from tests.utils.corpus import corpus_dir

REPO = Path(__file__).resolve().parents[1]


def documents(copies: int) -> list[DocumentInput]:
    """The textbook `copies` times, each copy under its own source prefix (the first keeps the book's names)."""
    root = corpus_dir()
    files = sorted(root.rglob("*.md"))
    return [
        DocumentInput(
            source=(f"copy{k:02d}/" if k else "") + p.relative_to(root).as_posix(),
            content=p.read_text(encoding="utf-8"),
        )
        for k in range(copies)
        for p in files
    ]


def questions(count: int) -> list[str]:
    """`count` questions: the quality set's in-book ones, then its off-topic ones."""
    qa = json.loads((REPO / "bench" / "quality_set.json").read_text(encoding="utf-8"))
    texts = [q["question"] for q in qa["questions"]]
    in_book = texts[: max(count - len(qa["off_topic"]), count * 4 // 5)]
    return (in_book + list(qa["off_topic"]))[:count]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(copies: int, texts: list[str], *, rounds: int) -> dict[str, Any]:
    """Ingest the book `copies` times into a fresh store, then time the hybrid query of every question."""
    data_dir = Path(tempfile.mkdtemp(prefix="lectern-bench-search-"))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        redis_url=f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        log_format="console",
        log_level="WARNING",
    )
    configure_logging(settings, role=ROLE_WORKER)
    await asyncio.to_thread(upgrade, settings)
    services = await build_services(settings, role=ROLE_WORKER)
    try:
        store, embedder = services.vectorstore, services.embedder
        assert store is not None
        assert embedder is not None, "offline mode embeds with the bundled local model"
        started = time.perf_counter()
        job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=documents(copies))
        outcome = await run_ingest_job(
            settings=settings, sessions=services.sessions, store=store, embedder=embedder, job_id=job.id
        )
        assert outcome.status == "succeeded", outcome
        ingest_s = time.perf_counter() - started
        chunks = await store.count()
        limit = settings.retrieval_top_k * CANDIDATE_FACTOR
        searches = [(await embedder.embed_query(text), encode_query(text)) for text in texts]
        timings: list[float] = []
        hits = 0
        for round_ in range(rounds + 1):
            for dense, sparse in searches:
                began = time.perf_counter()
                found = await store.query(dense=dense, sparse=sparse, limit=limit)
                if round_:  # round 0 warms up
                    timings.append((time.perf_counter() - began) * 1000)
                    hits += len(found)
        return {
            "copies": copies,
            "chunks": chunks,
            "dimensions": len(searches[0][0]),
            "questions": len(texts),
            "queries_timed": len(timings),
            "limit": limit,
            "mean_hits": round(hits / len(timings), 1),
            "ingest_s": round(ingest_s, 1),
            "p50_ms": round(_percentile(timings, 0.50), 2),
            "p95_ms": round(_percentile(timings, 0.95), 2),
            "mean_ms": round(statistics.fmean(timings), 2),
        }
    finally:
        await services.redis.flushdb()
        await services.aclose()
        shutil.rmtree(data_dir, ignore_errors=True)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    texts = questions(args.questions)
    results = []
    for copies in args.copies:
        result = await measure(copies, texts, rounds=args.rounds)
        print(
            f"{copies:>3}x book: {result['chunks']:>6} chunks ({result['dimensions']} dims), "
            f"{result['queries_timed']} hybrid queries (limit {result['limit']}): p50 {result['p50_ms']} ms, "
            f"p95 {result['p95_ms']} ms, mean {result['mean_ms']} ms; ingest {result['ingest_s']} s",
            flush=True,
        )
        results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10], help="corpus sizes, in books")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the questions")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "search.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
