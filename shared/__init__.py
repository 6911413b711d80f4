"""Lectern's domain package, imported by both the API and the arq worker."""

__version__ = "1.0.0"
