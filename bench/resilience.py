"""Resilience benchmark: failure-mode latency of /chat through the whole supervisord stack.

Run from the repo root: `.venv/bin/python -m bench.resilience [--requests 200]`

On loopback, with the fake OpenAI server at 0 ms latency and two Gunicorn workers:

1. closed and healthy: `/chat` p50/p95 (generative answers);
2. the OpenAI outage as the service meets it: the fake answers 500 until the breaker opens; for the
   requests that fail before it opens, retries performed per failed request (from /metrics:
   `lectern_upstream_retries_total` / failed calls) and their latency (the retry ladder);
3. breaker open: `/chat` p50/p95 (extractive fallback, no OpenAI call) and `/translate` p50/p95
   (503 `upstream_unavailable` + Retry-After at once).

Requests are sequential over fresh connections (spread over both workers). Results are printed and
written to bench/results/resilience.json.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.stack import Stack, wait_for

QUESTION = "What is a ROS 2 topic and how do nodes use it?"
SEED = [
    {
        "source": f"bench/ros2-{i}.md",
        "title": f"ROS 2 topics {i}",
        "content": f"# ROS 2 topics {i}\n\nA ROS 2 topic is a named bus: nodes publish messages to a topic and "
        f"other nodes subscribe to it. Topics decouple publishers from subscribers (part {i}).",
    }
    for i in range(5)
]


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) in milliseconds."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 2)


def timed(client: httpx.Client, method: str, path: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    """One request and its wall time."""
    started = time.perf_counter()
    response = client.request(method, path, json=body)
    return time.perf_counter() - started, response


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample family's values matching `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(requests: int) -> dict[str, Any]:
    """Start the stack and measure; returns the results."""
    fake = FakeOpenAI().start()
    stack = Stack(
        env={
            "OPENAI_API_KEY": "sk-bench-" + uuid.uuid4().hex,
            "OPENAI_BASE_URL": fake.url,
            "CIRCUIT_FAILURE_THRESHOLD": "5",
            "CIRCUIT_RECOVERY_TIMEOUT": "600",
            "RATE_LIMIT_CHAT": "1000000/minute",
            "AUTO_INGEST": "false",
            "LOG_LEVEL": "WARNING",
        }
    )
    results: dict[str, Any] = {"requests": requests, "web_concurrency": 2, "fake_llm_latency_ms": 0}
    try:
        stack.start(timeout=120)
        stack.wait_worker(timeout=60)
        job = httpx.post(stack.url("/api/ingest"), json={"documents": SEED}, timeout=30).json()["job_id"]
        wait_for(
            lambda: httpx.get(stack.url(f"/api/ingest/jobs/{job}"), timeout=5).json()["status"] == "succeeded",
            timeout=60,
            interval=0.5,
        )
        client = httpx.Client(base_url=stack.base_url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
        for _ in range(20):  # warm-up (connections, caches, JIT-free but lazy imports)
            timed(client, "POST", "/chat", {"query": QUESTION})

        healthy: list[float] = []
        for _ in range(requests):
            seconds, response = timed(client, "POST", "/chat", {"query": QUESTION})
            if response.status_code != 200 or response.json()["mode"] != "generative":
                raise RuntimeError(f"healthy /chat failed: {response.text}")
            healthy.append(seconds)
        results["closed_healthy_chat"] = {"p50_ms": pct(healthy, 50), "p95_ms": pct(healthy, 95)}

        before = httpx.get(stack.url("/metrics")).text
        fake.configure(fault="500")
        failing: list[float] = []
        refused_at = None
        for i in range(50):
            seconds, response = timed(client, "POST", "/translate", {"text": f"topics {uuid.uuid4().hex}"})
            if response.status_code != 503:
                raise RuntimeError(response.text)
            if seconds < 0.05:
                refused_at = i
                break
            failing.append(seconds)
        time.sleep(1.5)  # every worker adopts the opening
        after = httpx.get(stack.url("/metrics")).text
        retries = metric(after, "lectern_upstream_retries_total", upstream="openai") - metric(
            before, "lectern_upstream_retries_total", upstream="openai"
        )
        failed = metric(
            after, "lectern_upstream_call_duration_seconds_count", upstream="openai", outcome="failure"
        ) - metric(before, "lectern_upstream_call_duration_seconds_count", upstream="openai", outcome="failure")
        results["failing_before_open"] = {
            "failed_requests": len(failing),
            "failed_upstream_calls": failed,
            "retries": retries,
            "retries_per_failed_call": round(retries / failed, 2) if failed else None,
            "latency_p50_ms": pct(failing, 50) if failing else None,
            "latency_max_ms": pct(failing, 100) if failing else None,
            "first_fast_refusal_after_requests": refused_at,
        }

        open_chat: list[float] = []
        open_translate: list[float] = []
        calls_before = len(fake.requests_to("/chat/completions"))
        for _ in range(requests):
            seconds, response = timed(client, "POST", "/chat", {"query": QUESTION})
            if response.status_code != 200 or response.json()["mode"] != "extractive":
                raise RuntimeError(f"/chat with the breaker open: {response.text}")
            open_chat.append(seconds)
            seconds, response = timed(client, "POST", "/translate", {"text": f"topics {uuid.uuid4().hex}"})
            if response.status_code != 503 or "retry-after" not in response.headers:
                raise RuntimeError(f"/translate with the breaker open: {response.status_code}")
            open_translate.append(seconds)
        results["open_chat_extractive"] = {"p50_ms": pct(open_chat, 50), "p95_ms": pct(open_chat, 95)}
        results["open_translate_503"] = {"p50_ms": pct(open_translate, 50), "p95_ms": pct(open_translate, 95)}
        results["chat_completions_calls_while_open"] = len(fake.requests_to("/chat/completions")) - calls_before
        states = httpx.get(stack.url("/health/circuits")).json()["openai"]
        results["openai_breaker"] = {
            "state": states["state"],
            "processes": [(p["role"], p["state"]) for p in states["processes"]],
        }
        client.close()
    finally:
        stack.cleanup()
        fake.stop()
    return results


def main() -> None:
    """Parse arguments, run, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    results = run(args.requests)
    out = Path(__file__).parent / "results" / "resilience.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
