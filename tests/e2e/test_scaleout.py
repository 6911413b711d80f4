"""Past one Space: API and worker containers on one shared Redis and one PostgreSQL (issue 21).

Each "container" is its own `scripts/start` (supervisord and the programs `LECTERN_ROLES` picks) with its own
DATA_DIR, port and HOSTNAME, run as uid 1000 (when the tests run as root), all on one scratch database of
the machine's Redis and one fresh PostgreSQL database; the fake OpenAI server is the LLM. The vector store
is the embedded one, served by the container with the `store` role over the Redis RPC (there is no Qdrant
server on this machine).

- one store+worker container and two API-only containers: ingest through one API, chat through the other,
  the answer cites the document; `/health/circuits` lists every container's processes with their host;
  a second `store` container is refused; a shared rate limit gives exactly one 429 for N+1 requests over
  the two APIs; a breaker opened in one API container is open in the other before its next call;
- (tests/e2e/test_scaleout_jobs.py: migrations applied once by three containers starting together, and a
  job finished by another worker container when the one running it is SIGKILLed.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.scaleout import (
    ADMIN,
    CHAT_LIMIT,
    THRESHOLD,
    Container,
    base_env,
    expected_chunks,
    scratch_redis_db,
    start_together,
    wait_job,
    wait_store_served,
)
from tests.utils.stack import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKER = "quokka" + uuid.uuid4().hex[:6]
DOC = {
    "source": f"scaleout/{MARKER}.md",
    "title": "Hopping robots",
    "content": f"# Hopping robots\n\nThe {MARKER} robot hops on two springs. A {MARKER} robot stores energy in "
    f"its springs between hops, which is how the {MARKER} robot saves power.",
}
QUESTION = f"How does the {MARKER} robot hop?"


# -- one store+worker container, two API containers --------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]) -> Iterator[dict[str, Any]]:
    """`worker,store` + two `api` containers on one Redis database and one PostgreSQL database."""
    fake_openai.reset()
    with scratch_redis_db() as redis_url:
        env = base_env(redis_url, pg_database_factory(), fake_openai)
        worker = Container("lectern-w1", "worker,store,watchdog", env=env)
        apis = [Container(f"lectern-a{i}", "api", env=env) for i in (1, 2)]
        try:
            worker.start()
            wait_store_served(redis_url, timeout=120)
            start_together(apis)
            apis[0].wait_worker(timeout=90)
            yield {"worker": worker, "a1": apis[0], "a2": apis[1], "env": env, "redis_url": redis_url}
        finally:
            for container in [*apis, worker]:
                container.cleanup()
            fake_openai.reset()


def test_ingest_through_one_api_chat_through_the_other(deployment: dict[str, Any]) -> None:
    """A document ingested through API container 1 is cited by an answer from API container 2; the store
    is the worker container's embedded Qdrant, reached over the shared Redis."""
    a1, a2, worker = deployment["a1"], deployment["a2"], deployment["worker"]

    def running(container: Any) -> set[str]:
        return {program for program, (state, _) in container.program_states().items() if state == "RUNNING"}

    # /health answers before supervisord calls the program RUNNING (startsecs=2): wait for the states.
    wait_for(lambda: running(a1) == {"api"}, timeout=30, interval=0.5, message="a1 runs the api only")
    assert running(a1) == {"api"}
    wait_for(lambda: running(worker) == {"worker", "watchdog"}, timeout=30, interval=0.5, message="worker states")
    assert running(worker) == {"worker", "watchdog"}
    with a1.client() as client:
        response = client.post("/api/ingest", json={"documents": [DOC]}, headers=ADMIN)
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["chunks_upserted"] == expected_chunks([DOC])
    assert worker.events("ingest.job_started"), "the job did not run in the worker container"
    with a2.client() as client:
        answer = client.post("/chat", json={"query": QUESTION})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert DOC["source"] in {c["source"] for c in body["citations"]}, body
        verified = client.get("/api/documents?verify=true", headers=ADMIN).json()
        assert verified["chunks_in_store"] == expected_chunks([DOC])


def test_circuits_list_every_container_with_its_host(deployment: dict[str, Any]) -> None:
    """/health/circuits, from either API container, lists the processes of all three containers, each with
    its container's host name (additive `host` field)."""
    expected = {("lectern-a1", "api"), ("lectern-a2", "api"), ("lectern-w1", "worker")}
    for name in ("a1", "a2"):

        def hosts(container: Container = deployment[name]) -> set[tuple[str, str]] | None:
            body = httpx.get(container.url("/health/circuits"), timeout=10).json()
            seen = {(p["host"], p["role"]) for p in body["openai"]["processes"]}
            return seen if seen == expected else None

        wait_for(hosts, timeout=20, interval=0.5, message=f"every container in {name}'s /health/circuits")


def test_second_store_container_is_refused(deployment: dict[str, Any]) -> None:
    """Another container with the `store` role on the same Redis exits 2 with one clear line: the embedded
    store has one owner."""
    intruder = Container("lectern-w9", "worker,store", env=deployment["env"])
    try:
        intruder.start(wait=False)
        assert intruder.wait_exit(timeout=90) == 2, intruder.output_tail()
        refusals = [line for line in intruder.stderr_lines if line.startswith("lectern: ")]
        assert len(refusals) == 1, intruder.output_tail()
        assert "LECTERN_ROLES=worker,store" in refusals[0]
        assert "only one container may have the 'store' role" in refusals[0]
        assert not any("supervisord started" in line for line in intruder.stdout_lines + intruder.stderr_lines)
    finally:
        intruder.cleanup()


def test_rate_limit_is_shared_by_the_api_containers(deployment: dict[str, Any]) -> None:
    """RATE_LIMIT_CHAT=10/minute for one user, 11 chat requests alternating between the two API containers:
    exactly one 429 (the last), with Retry-After."""
    a1, a2 = deployment["a1"], deployment["a2"]
    email = f"limit-{uuid.uuid4().hex[:8]}@example.com"
    signed = httpx.post(
        a1.url("/api/auth/sign-up"), json={"email": email, "name": "Limit", "password": "long-enough-pw"}, timeout=30
    )
    assert signed.status_code == 200, signed.text
    auth = {"Authorization": f"Bearer {signed.json()['token']}"}
    statuses = []
    for i in range(CHAT_LIMIT + 1):
        container = (a1, a2)[i % 2]
        response = httpx.post(container.url("/chat"), json={"query": QUESTION}, headers=auth, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
    assert statuses.count(429) == 1, statuses
    assert statuses[-1] == 429, statuses
    assert statuses.count(200) == CHAT_LIMIT, statuses


def test_breaker_opened_in_one_container_is_open_in_the_other(
    deployment: dict[str, Any], fake_openai: FakeOpenAI
) -> None:
    """OpenAI fails; /translate through API container 1 opens the openai breaker (threshold 2). API container
    2 then refuses its very next call fast, without any request reaching OpenAI."""
    a1, a2 = deployment["a1"], deployment["a2"]
    fake_openai.configure(fault="500")
    try:
        for _ in range(THRESHOLD):
            response = httpx.post(a1.url("/translate"), json={"text": f"ROS 2 {uuid.uuid4().hex}"}, timeout=60)
            assert response.status_code == 503, response.text
        view = httpx.get(a1.url("/health/circuits"), timeout=10).json()["openai"]
        assert view["state"] == "open", view
        calls_before = len(fake_openai.requests_to("/chat/completions"))
        started = time.perf_counter()
        response = httpx.post(a2.url("/translate"), json={"text": f"ROS 2 {uuid.uuid4().hex}"}, timeout=60)
        took = time.perf_counter() - started
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "upstream_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert len(fake_openai.requests_to("/chat/completions")) == calls_before, "container 2 called OpenAI"
        assert took < 1.0, f"container 2 took {took:.2f} s to refuse"
        rows = httpx.get(a2.url("/health/circuits"), timeout=10).json()["openai"]["processes"]
        assert {row["host"] for row in rows if row["state"] == "open"} >= {"lectern-a1", "lectern-a2"}, rows
        print(f"\nopen breaker adopted by the other container: refused in {took * 1000:.1f} ms, 0 OpenAI calls")
    finally:
        fake_openai.reset()
