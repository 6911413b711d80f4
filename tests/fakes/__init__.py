"""Fakes at the network boundary only (the OpenAI-compatible server)."""
