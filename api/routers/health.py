"""Liveness, readiness and circuit state."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import shared
from api.deps import ServicesDep, SettingsDep
from api.pages import page_response, prefers_html
from shared.platform.circuit_state import ProcessObservers, merged_circuits
from shared.platform.constants import SERVICE_NAME
from shared.platform.readiness import ReadinessProbe

#: Response header naming the process that answered (lets tests and operators see every worker agrees).
SERVED_BY = "X-Served-By"

router = APIRouter(tags=["health"])


@router.get(
    "/",
    summary="Service banner (a browser gets the reader playground page)",
    response_model=dict[str, str],
    responses={200: {"content": {"text/html": {}}}},
)
async def root(request: Request, settings: SettingsDep) -> Response:
    """Name, version and where the docs are; an `Accept` that prefers text/html gets the HTML page instead."""
    if prefers_html(request.headers.get("accept")):
        return page_response("reader", settings, vary_accept=True)
    banner = {"status": "online", "service": SERVICE_NAME, "version": shared.__version__, "docs": "/docs"}
    return JSONResponse(banner, headers={"Vary": "Accept"})


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
    return JSONResponse(
        report,
        status_code=503 if report["status"] == "unavailable" else 200,
        headers={SERVED_BY: str(os.getpid())},
    )


@router.get("/health/circuits", summary="Circuit breaker state, merged over every live process")
async def circuits(services: ServicesDep) -> JSONResponse:
    """One entry per breaker; the state is the worst over every API worker and the arq worker."""
    observers = services.extras.get("observers")
    sync = observers.sync if isinstance(observers, ProcessObservers) else None
    body = await merged_circuits(resilience=services.resilience, redis=services.redis, sync=sync)
    return JSONResponse(body, headers={SERVED_BY: str(os.getpid()), "Cache-Control": "no-store"})
