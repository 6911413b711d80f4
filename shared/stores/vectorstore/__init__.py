"""Vector store adapter (Qdrant) and the embedded-mode arrangement.

Two ways to reach the store, behind one `VectorStore` protocol (`protocol.py`):

- `QdrantVectorStore` (`qdrant.py`): with `QDRANT_URL` every process talks to the Qdrant server through
  an `AsyncQdrantClient`.
- `EdgeVectorStore` (`edge.py`): in embedded mode (no `QDRANT_URL`) the worker of the `store` role opens
  a Qdrant Edge shard in `DATA_DIR/qdrant` (Qdrant's engine in-process; one process per folder), its
  calls on one dedicated thread so the event loop never blocks.
- `RemoteVectorStore` (`remote.py`): what every other process uses in embedded mode, an RPC over Redis to
  the store owner's `VectorStoreRpcServer`.

`qdrant_client` and `qdrant_edge` are imported only where such a store is built: API processes in
embedded mode load neither. `QdrantVectorStore` and `EdgeVectorStore` stay importable from here (loaded
on first access).
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

    from shared.stores.vectorstore.edge import EdgeVectorStore
    from shared.stores.vectorstore.qdrant import QdrantVectorStore

__all__ = [
    "PAYLOAD_FIELDS",
    "RPC_REPLY_PREFIX",
    "RPC_REQUESTS_KEY",
    "RPC_SERVER_KEY",
    "RPC_SERVER_TTL_S",
    "ChunkPoint",
    "CollectionMismatch",
    "EdgeVectorStore",
    "QdrantVectorStore",
    "RemoteVectorStore",
    "ScoredChunk",
    "VectorStore",
    "VectorStoreRpcServer",
    "create_vector_store",
    "point_id",
]


def __getattr__(name: str) -> Any:
    """The Qdrant stores on first access, so importing this package loads neither engine's client."""
    if name == "QdrantVectorStore":
        from shared.stores.vectorstore.qdrant import QdrantVectorStore

        return QdrantVectorStore
    if name == "EdgeVectorStore":
        from shared.stores.vectorstore.edge import EdgeVectorStore

        return EdgeVectorStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_vector_store(
    settings: Settings, *, role: str, redis: ArqRedis, resilience: Resilience | None = None
) -> VectorStore:
    """The process's store: a server client everywhere with QDRANT_URL; in embedded mode the worker of the
    container with the `store` role (every role, in one container) owns the Edge shard and every other
    process reaches it over the Redis RPC (no Qdrant import)."""
    from shared.platform.constants import ROLE_WORKER

    if not settings.embedded_qdrant:
        from shared.stores.vectorstore.qdrant import build_qdrant_store

        return build_qdrant_store(settings, resilience=resilience)
    if role == ROLE_WORKER and settings.owns_embedded_store:
        from shared.stores.vectorstore.edge import build_edge_store

        return build_edge_store(settings, resilience=resilience)
    return RemoteVectorStore(settings, redis=redis, resilience=resilience)
