"""Liveness, readiness and circuit state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import shared
from api.deps import ServicesDep
from shared.constants import SERVICE_NAME
from shared.readiness import ReadinessProbe

router = APIRouter(tags=["health"])


@router.get("/", summary="Service banner")
async def root() -> dict[str, str]:
    """Name, version and where the docs are."""
    return {"status": "online", "service": SERVICE_NAME, "version": shared.__version__, "docs": "/docs"}


@router.get("/health", summary="Liveness (never touches an upstream)")
async def health() -> dict[str, str]:
    """Always `{"status": "healthy"}` while the process serves requests."""
    return {"status": "healthy"}


@router.get(
    "/health/ready",
    summary="Readiness of every upstream",
    responses={503: {"description": "A critical upstream (database or Redis) is unavailable"}},
)
async def ready(request: Request, services: ServicesDep) -> JSONResponse:
    """Database, vector store, Redis, LLM and worker checks; 503 only when `unavailable`."""
    probe: ReadinessProbe = getattr(request.app.state, "readiness", None) or ReadinessProbe()
    request.app.state.readiness = probe
    report = await probe.run(services)
    return JSONResponse(report, status_code=503 if report["status"] == "unavailable" else 200)


@router.get("/health/circuits", summary="Circuit breaker state")
async def circuits(services: ServicesDep) -> dict[str, Any]:
    """One entry per breaker (this process's view; the resilience work merges all processes)."""
    return {name: snap.as_dict() for name, snap in services.resilience.snapshot().items()}
