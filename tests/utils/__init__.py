"""Test helpers: stack runner, ports, venvs."""
