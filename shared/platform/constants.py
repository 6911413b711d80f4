"""Names shared by the API and the worker: queues, jobs, Redis keys, vector names."""

from typing import Final

SERVICE_NAME: Final = "lectern"

# arq
QUEUE_NAME: Final = "lectern:queue"
HEALTH_CHECK_KEY: Final = "lectern:queue:health-check"
JOB_INGEST: Final = "ingest_documents"

# Redis key prefixes
CIRCUIT_STATE_PREFIX: Final = "lectern:circuit:"
#: Each process's breaker row (shared.platform.circuit_state), refreshed every second while its event loop
#: runs; the watchdog reads the arq worker's row to tell a hung worker of ITS container from a live one.
CIRCUIT_PROCESS_KEY: Final = CIRCUIT_STATE_PREFIX + "proc:{host}:{role}:{pid}"
SESSION_CACHE_PREFIX: Final = "lectern:auth:session:"
CONTENT_CACHE_PREFIX: Final = "lectern:content:"
RATE_LIMIT_PREFIX: Final = "lectern:ratelimit"
VECTOR_RPC_PREFIX: Final = "lectern:vectorstore:"
#: redis-py `Lock`s: ingestion jobs run one at a time; the dev auto-ingest's check-and-submit runs once.
INGEST_LOCK_KEY: Final = "lectern:ingest:lock"
INGEST_AUTO_LOCK_KEY: Final = "lectern:ingest:auto-ingest"

# Qdrant
DENSE_VECTOR: Final = "dense"
SPARSE_VECTOR: Final = "bm25"

# Roles a process can report
ROLE_API: Final = "api"
ROLE_WORKER: Final = "worker"

#: Embedded-mode vector-store queries in flight per API process (the store gate in shared.answers.retrieval;
#: an API process also opens this many Redis connections at start, one per waiting query). The worker's
#: local Qdrant answers what is queued in batches of up to 32 at ~0.5 ms a query; a cap still keeps a
#: flood of readers queueing in the API rather than timing out RPCs and opening the `qdrant` breaker on
#: our own backlog (at 8, the cap itself was the queue at 50 readers).
EMBEDDED_STORE_CONCURRENCY: Final = 32

#: The bundled local semantic model (shared.inference.semantic, the relevance gate's signal): name and size.
LOCAL_EMBEDDING_MODEL: Final = "wordllama-l2-supercat-256"
LOCAL_EMBEDDING_DIMENSIONS: Final = 256
#: The offline dense embedder (shared.inference.local_dense): its name in vector signatures, and its size.
OFFLINE_EMBEDDING_MODEL: Final = "multilingual-e5-small-q4"
OFFLINE_EMBEDDING_DIMENSIONS: Final = 384
