"""`create_app(settings)`: assembles middleware, routers, error handlers and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import shared
from api.errors import install_error_handlers
from api.health_fastpath import HealthFastPath
from api.middleware import HeadMiddleware, install_middleware
from api.observability import install_observability
from api.openapi import install_openapi
from api.pages import install_pages
from api.routers import build_router
from shared.platform.clients import build_services
from shared.platform.config import Settings, load_settings
from shared.platform.constants import ROLE_API
from shared.platform.logging import configure_logging
from shared.platform.ratelimit import Limit, RateLimiter


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application (Gunicorn calls `api.main:create_app()` in each worker)."""
    settings = settings or load_settings()
    configure_logging(settings, role=ROLE_API)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await build_services(settings, role=ROLE_API)
        app.state.rate_limiter = RateLimiter(settings.effective_redis_url)  # one per process, like services
        try:
            yield
        finally:
            await app.state.rate_limiter.aclose()
            await app.state.services.aclose()

    app = FastAPI(
        title="Lectern",
        version=shared.__version__,
        summary="Grounded, cited answers from the Physical AI & Humanoid Robotics textbook.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.chat_rate_limit = Limit.parse("chat", settings.rate_limit_chat)
    install_error_handlers(app)
    app.include_router(build_router())
    install_pages(app)  # /admin and /static (the reader page is GET / for browsers)
    install_openapi(app)
    install_middleware(app, settings=settings)
    install_observability(app)
    app.add_middleware(HealthFastPath)  # liveness probes skip routing and the other middleware
    app.add_middleware(HeadMiddleware)  # outermost: HEAD runs as GET everywhere, the fast path included
    return app
