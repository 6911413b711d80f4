"""HTTP routers, aggregated in one place."""

from fastapi import APIRouter

from api.routers import auth, chat, content, health, history, ingest, metrics, openai_compat


def build_router() -> APIRouter:
    """Every router of the service."""
    router = APIRouter()
    for module in (health, auth, chat, history, content, ingest, openai_compat, metrics):
        router.include_router(module.router)
    return router
