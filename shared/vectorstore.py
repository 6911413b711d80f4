"""Vector store adapter (Qdrant). Placeholder interface; the ingestion work fills it in."""

from __future__ import annotations

from typing import Protocol


class VectorStore(Protocol):
    """What the rest of the code needs from the vector store."""

    async def close(self) -> None:
        """Release connections."""
        ...
