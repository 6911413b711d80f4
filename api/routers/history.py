"""Routes: history (being built)."""

from fastapi import APIRouter

router = APIRouter()
