"""Routes: metrics (being built)."""

from fastapi import APIRouter

router = APIRouter()
