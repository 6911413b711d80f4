"""Typed dependencies for routes: settings, services, database sessions and the other clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.clients import Services
from shared.config import Settings


def get_settings(request: Request) -> Settings:
    """The process's settings (read once by the app factory)."""
    settings: Settings = request.app.state.settings
    return settings


def get_services(request: Request) -> Services:
    """The process's clients, built in the lifespan."""
    services: Services = request.app.state.services
    return services


async def get_db(services: Annotated[Services, Depends(get_services)]) -> AsyncIterator[AsyncSession]:
    """A database session for one request."""
    async with services.sessions() as session:
        yield session


def get_redis(services: Annotated[Services, Depends(get_services)]) -> ArqRedis:
    """The Redis pool (also the arq queue)."""
    return services.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
DbSession = Annotated[AsyncSession, Depends(get_db)]
RedisDep = Annotated[ArqRedis, Depends(get_redis)]
