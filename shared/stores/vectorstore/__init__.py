"""Vector store adapter (Qdrant) and the embedded-mode arrangement.

Two ways to reach the store, behind one `VectorStore` protocol (`protocol.py`):

- `QdrantVectorStore` (`qdrant.py`): talks to Qdrant itself. With `QDRANT_URL` every process uses an
  `AsyncQdrantClient`. In embedded mode (no `QDRANT_URL`) only the arq worker opens the local-mode store
  (`QdrantClient(path=DATA_DIR/qdrant)`, which allows one process per folder); its blocking calls run on
  one dedicated thread so the event loop never blocks. Both kinds answer through the same public calls
  (a search is one `query_batch_points` Query API request).
- `RemoteVectorStore` (`remote.py`): what the API processes use in embedded mode, an RPC over Redis to
  the worker's `VectorStoreRpcServer`.

`qdrant_client` (~56 MB and ~0.8 s per process) is imported only where a Qdrant store is built: API
processes in embedded mode never load it. `QdrantVectorStore` stays importable from here (loaded on
first access).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.platform.config import Settings
from shared.platform.resilience import Resilience
from shared.stores.vectorstore.protocol import (
    PAYLOAD_FIELDS,
    ChunkPoint,
    CollectionMismatch,
    ScoredChunk,
    VectorStore,
    point_id,
)
from shared.stores.vectorstore.remote import (
    RPC_REPLY_PREFIX,
    RPC_REQUESTS_KEY,
    RPC_SERVER_KEY,
    RPC_SERVER_TTL_S,
    RemoteVectorStore,
    VectorStoreRpcServer,
)

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from shared.stores.vectorstore.qdrant import QdrantVectorStore

__all__ = [
    "PAYLOAD_FIELDS",
    "RPC_REPLY_PREFIX",
    "RPC_REQUESTS_KEY",
    "RPC_SERVER_KEY",
    "RPC_SERVER_TTL_S",
    "ChunkPoint",
    "CollectionMismatch",
    "QdrantVectorStore",
    "RemoteVectorStore",
    "ScoredChunk",
    "VectorStore",
    "VectorStoreRpcServer",
    "create_vector_store",
    "point_id",
]


def __getattr__(name: str) -> Any:
    """`QdrantVectorStore` on first access, so importing this package does not load qdrant_client."""
    if name == "QdrantVectorStore":
        from shared.stores.vectorstore.qdrant import QdrantVectorStore

        return QdrantVectorStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_vector_store(
    settings: Settings, *, role: str, redis: ArqRedis, resilience: Resilience | None = None
) -> VectorStore:
    """The process's store: a server client everywhere with QDRANT_URL; in embedded mode the worker of the
    container with the `store` role (every role, in one container) owns the local folder and every other
    process reaches it over the Redis RPC (no qdrant_client import)."""
    from shared.platform.constants import ROLE_WORKER

    if not settings.embedded_qdrant or (role == ROLE_WORKER and settings.owns_embedded_store):
        from shared.stores.vectorstore.qdrant import build_qdrant_store

        return build_qdrant_store(settings, resilience=resilience)
    return RemoteVectorStore(settings, redis=redis, resilience=resilience)
