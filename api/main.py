"""`create_app(settings)`: assembles middleware, routers, error handlers and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import shared
from api.errors import install_error_handlers
from api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from api.routers import build_router
from shared.clients import build_services
from shared.config import Settings, load_settings
from shared.constants import ROLE_API
from shared.logging import configure_logging

MiB = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application (Gunicorn calls `api.main:create_app()` in each worker)."""
    settings = settings or load_settings()
    configure_logging(settings, role=ROLE_API)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await build_services(settings, role=ROLE_API)
        try:
            yield
        finally:
            await app.state.services.aclose()

    app = FastAPI(
        title="Lectern",
        version=shared.__version__,
        summary="Grounded, cited answers from the Physical AI & Humanoid Robotics textbook.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(build_router())
    app.add_middleware(
        BodySizeLimitMiddleware,
        default_limit=1 * MiB,
        large_limit=20 * MiB,
        large_prefixes=("/api/ingest",),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_origin_regex=settings.cors_origin_regex,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-API-Key", "Accept"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
