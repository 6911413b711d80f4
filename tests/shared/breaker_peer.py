"""A second Lectern process for the shared-breaker tests: `python -m tests.shared.breaker_peer CONFIG`.

It builds its own `Resilience` and `CircuitSync` (as an API worker does) on the Redis database and key
prefix given in CONFIG (JSON: redis_url, prefix, base_url, threshold, recovery), prints `READY`, then
runs one command per stdin line (JSON) and answers one `RESULT {...}` line:

- `{"op": "calls", "count": n, "concurrency": c, "at": epoch|null}`: n chat completions to `base_url`
  through `resilience.call` (c at a time, starting at wall time `at`); returns each outcome and latency;
- `{"op": "state"}`: this process's view of the `openai` breaker;
- `{"op": "exit"}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from openai import AsyncOpenAI

from shared.platform.circuit_state import CircuitSync
from shared.platform.config import Settings
from shared.platform.errors import UpstreamUnavailable
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream

FAST = RetryPolicy(max_tries=2, max_time_s=2, base_s=0.01, cap_s=0.02)


async def one_call(resilience: Resilience, client: AsyncOpenAI) -> tuple[str, float]:
    """One completion behind the breaker: (outcome, milliseconds)."""
    started = time.perf_counter()
    try:
        await resilience.call(
            Upstream.OPENAI,
            lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]),
        )
        outcome = "ok"
    except UpstreamUnavailable:
        outcome = "unavailable"
    return outcome, (time.perf_counter() - started) * 1000


async def calls(resilience: Resilience, client: AsyncOpenAI, command: dict[str, Any]) -> dict[str, Any]:
    """Run the calls of one `calls` command."""
    if command.get("at"):
        await asyncio.sleep(max(0.0, float(command["at"]) - time.time()))
    count, concurrency = int(command.get("count", 1)), int(command.get("concurrency", 1))
    results: list[tuple[str, float]] = []
    while len(results) < count:
        batch = min(concurrency, count - len(results))
        results += await asyncio.gather(*(one_call(resilience, client) for _ in range(batch)))
    return {"outcomes": [r[0] for r in results], "latencies_ms": [r[1] for r in results]}


async def main(config: dict[str, Any]) -> None:
    """Serve commands until `exit` or end of input."""
    from redis.asyncio import Redis

    settings = Settings(
        _env_file=None, circuit_failure_threshold=config["threshold"], circuit_recovery_timeout=config["recovery"]
    )
    resilience = Resilience(settings, policies={Upstream.OPENAI: FAST})
    redis = Redis.from_url(config["redis_url"], socket_timeout=0.2, socket_connect_timeout=0.5)
    sync = CircuitSync(resilience=resilience, redis=redis, role="api", prefix=config["prefix"], owns_redis=True).start()
    client = AsyncOpenAI(api_key="sk-test-peer", base_url=config["base_url"], max_retries=0, timeout=5)
    await resilience.refresh_shared()
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "exit":
                break
            if command["op"] == "calls":
                answer = await calls(resilience, client, command)
            else:
                breaker = resilience.breaker(Upstream.OPENAI)
                answer = {"state": breaker.refresh(), "failure_count": breaker.failure_count}
            print("RESULT " + json.dumps(answer), flush=True)
    finally:
        await client.close()
        await sync.aclose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
