"""Routes: ingest (being built)."""

from fastapi import APIRouter

router = APIRouter()
