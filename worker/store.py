"""The worker process of a container whose roles include `store` but not `worker`: it opens the embedded
Qdrant folder and serves it over the Redis RPC (`VectorStoreRpcServer`), and runs no jobs.

That is the embedded-mode shape past one container (README "Topology"): one store container, any number
of API and worker containers reaching it over the shared Redis, so a worker container can be killed
while its job is finished by another one.
"""

from __future__ import annotations

import asyncio
import signal

from shared.platform.clients import build_services
from shared.platform.config import Settings
from shared.platform.constants import ROLE_WORKER
from shared.platform.logging import get_logger
from shared.stores.vectorstore import VectorStoreRpcServer

log = get_logger(__name__)


async def serve_store(settings: Settings) -> None:
    """Serve the embedded store until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    services = await build_services(settings, role=ROLE_WORKER)
    server: VectorStoreRpcServer | None = None
    try:
        store = services.vectorstore
        assert store is not None
        await store.ensure_collection()  # a dimension mismatch stops here, with the reindexing advice
        server = VectorStoreRpcServer(store, redis=services.redis)
        await server.start()
        log.info("store.serving", host=settings.hostname, path=str(settings.qdrant_path))
        await stop.wait()
    finally:
        if server is not None:
            await server.stop()
        await services.aclose()
        log.info("store.stopped")
