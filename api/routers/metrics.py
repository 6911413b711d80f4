"""GET /metrics: Prometheus text merged across every Gunicorn worker and the arq worker."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

import shared.platform.metrics as metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics (all processes)", response_class=Response)
async def prometheus_metrics() -> Response:
    """Request counts and latency by route, breaker state and transitions, retries, upstream latency, jobs."""
    body, content_type = await run_in_threadpool(metrics.render)
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
