"""arq job functions: thin wrappers over `shared` services."""

from __future__ import annotations

from typing import Any


async def ping(ctx: dict[str, Any]) -> str:
    """A no-op job used to check the queue round trip."""
    return "pong"


JOB_FUNCTIONS: list[Any] = [ping]
