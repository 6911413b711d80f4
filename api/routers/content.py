"""Routes: content (being built)."""

from fastapi import APIRouter

router = APIRouter()
