"""Auth benchmark: the auth step of an authenticated request (cache hit / miss) and sign-in throughput.

Run: .venv/bin/python -m bench.auth [--backend sqlite|postgresql|both] [--iterations 2000]
Needs the machine's Redis (LECTERN_TEST_REDIS, default redis://127.0.0.1:6379) and, for PostgreSQL,
LECTERN_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test; a scratch database is created).

Measures, in process:
- auth step = `resolve_session` (what `CurrentUser`/`OptionalUser` run per request): median and p95 for a
  cache hit (one Redis GET) and a cache miss (one SELECT joining session, user and profile, then a SET);
- the whole `GET /api/auth/verify` through the ASGI app (cache hit), for context;
- scrypt (n=2**14, r=8, p=1): hashes per second on 1 and 2 threads; unknown-email vs wrong-password time;
- sign-in throughput: concurrent POST /api/auth/sign-in/email through the app (one process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from api.main import create_app
from shared.accounts.auth import SCRYPT_PARAMS, hash_password, hash_token, verify_password
from shared.accounts.cache import SessionCache
from shared.accounts.sessions import resolve_session
from shared.platform.clients import Services
from shared.platform.config import Settings
from shared.stores.db.migrate import upgrade

REDIS = os.environ.get("LECTERN_TEST_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN = os.environ.get("LECTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"median {statistics.median(ms):7.3f} ms   p95 {p95:7.3f} ms   (n={len(ms)})"


async def _timed(fn: Callable[[], Awaitable[Any]], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


def _settings(backend: str) -> tuple[Settings, Callable[[], None]]:
    values: dict[str, Any] = {
        "data_dir": Path(tempfile.mkdtemp(prefix="lectern-bench-")),
        "redis_url": f"{REDIS}/14",
        "better_auth_secret": "bench-secret-" + uuid.uuid4().hex,
        "rate_limit_sign_in": "100000/minute",
        "log_level": "WARNING",
    }
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if backend == "postgresql":
        name = f"lectern_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        values["database_url"] = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"

        def cleanup() -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return Settings(_env_file=None, **values), cleanup  # type: ignore[call-arg]


async def bench_backend(backend: str, iterations: int, sign_ins: int, concurrency: int) -> None:
    """Auth-step and sign-in numbers for one database backend."""
    settings, cleanup = _settings(backend)
    try:
        await asyncio.to_thread(upgrade, settings)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
                r = await client.post(
                    "/api/auth/sign-up", json={"email": email, "name": "Bench", "password": "bench-password"}
                )
                token = r.json()["token"]
                client.cookies.clear()
                services: Services = app.state.services
                cache = SessionCache(services.redis)

                async def hit() -> None:
                    assert await resolve_session(
                        sessions=services.sessions, cache=cache, resilience=services.resilience, token=token
                    )

                async def miss() -> None:
                    await cache.delete(hash_token(token))
                    await hit()

                async def verify() -> None:
                    response = await client.get("/api/auth/verify", headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 200

                await hit()
                print(f"\n[{backend}] auth step (resolve_session)")
                print(f"  cache hit : {_stats(await _timed(hit, iterations))}")
                print(f"  cache miss: {_stats(await _timed(miss, max(iterations // 4, 50)))}")
                print(f"  GET /api/auth/verify, cache hit, whole ASGI request: {_stats(await _timed(verify, 500))}")

                sem = asyncio.Semaphore(concurrency)

                async def sign_in() -> None:
                    async with sem:
                        response = await client.post(
                            "/api/auth/sign-in/email", json={"email": email, "password": "bench-password"}
                        )
                        assert response.status_code == 200, response.text

                started = time.perf_counter()
                await asyncio.gather(*(sign_in() for _ in range(sign_ins)))
                elapsed = time.perf_counter() - started
                print(
                    f"  sign-in throughput: {sign_ins / elapsed:6.1f} sign-ins/s "
                    f"({sign_ins} requests, concurrency {concurrency}, one process)"
                )
    finally:
        cleanup()


def bench_scrypt(rounds: int = 20) -> None:
    """scrypt cost: hashes per second on 1 and 2 threads, and the unknown-email path's time."""
    import concurrent.futures

    p = SCRYPT_PARAMS
    print(f"\nscrypt n=2**{p.n.bit_length() - 1} r={p.r} p={p.p} dklen={p.dklen} (memory {128 * p.n * p.r >> 20} MiB)")
    stored = hash_password("bench-password")
    for threads in (1, 2):
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: verify_password("bench-password", stored), range(rounds * threads)))
        elapsed = time.perf_counter() - started
        print(f"  {threads} thread(s): {rounds * threads / elapsed:6.1f} verifications/s")
    wrong = [_time(lambda: verify_password("wrong-password", stored)) for _ in range(rounds)]
    unknown = [_time(lambda: verify_password("wrong-password", None)) for _ in range(rounds)]
    print(f"  wrong password : {_stats(wrong)}")
    print(f"  unknown email  : {_stats(unknown)}")


def _time(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--sign-ins", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    bench_scrypt()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        asyncio.run(bench_backend(backend, args.iterations, args.sign_ins, args.concurrency))


if __name__ == "__main__":
    main()
