"""Container-equivalent run: replay the Dockerfile without Docker and check the Space would answer.

A fresh venv from /usr/bin/python3 gets exactly the Dockerfile's pip command; the files the Dockerfile
copies (honouring .dockerignore) land in a stand-in for WORKDIR under a stand-in HOME; the CMD runs as
uid 1000 with only the Dockerfile's ENV (plus the venv on PATH), PORT=7860, stdout/stderr pipes made by
root. /health must answer 200.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.dockerfile import Dockerfile, copy_context, dockerignore_rules, is_ignored, parse_dockerfile
from tests.utils.stack import NONROOT_UID, REPO, Stack, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts the stack as uid 1000 (the Space's user): run as root"),
]

SPACE_PORT = 7860


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    """The parsed Dockerfile."""
    return parse_dockerfile(REPO / "Dockerfile")


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def test_dockerfile_follows_the_space_recipe(dockerfile: Dockerfile) -> None:
    """Base image, apt packages, uid-1000 user, HOME/WORKDIR, chowned COPY, pip --no-cache-dir, port, CMD."""
    assert dockerfile.base_image == "python:3.11-slim"
    assert "redis-server" in dockerfile.apt_packages
    assert dockerfile.useradd_uid == NONROOT_UID
    assert dockerfile.user == "user"
    assert dockerfile.env["HOME"] == "/home/user"
    assert dockerfile.workdir == "/home/user/app"
    assert dockerfile.copies, "nothing copied"
    assert all(chown == "user" for _, _, chown in dockerfile.copies)
    assert dockerfile.pip_commands == [["pip", "install", "--no-cache-dir", "-r", "requirements.txt"]]
    assert dockerfile.env["PORT"] == str(SPACE_PORT)
    assert dockerfile.expose == [SPACE_PORT]
    assert dockerfile.cmd == ["scripts/start"]
    front_matter = (REPO / "README.md").read_text(encoding="utf-8").split("---", 2)[1]
    assert f"app_port: {SPACE_PORT}" in front_matter


def test_dockerignore_keeps_secrets_and_junk_out_but_the_app_in() -> None:
    """.dockerignore drops .env, .git, venvs, data and caches; keeps the code the CMD needs."""
    rules = dockerignore_rules(REPO / ".dockerignore")
    for ignored in (".env", ".git/config", ".venv/bin/python", "data/lectern.db", "api/__pycache__/main.pyc"):
        assert is_ignored(ignored, rules), ignored
    for kept in ("scripts/start", "supervisord.conf", "api/main.py", "shared/platform/config.py", "requirements.txt"):
        assert not is_ignored(kept, rules), kept


@pytest.fixture(scope="module")
def image_root(dockerfile: Dockerfile) -> Iterator[Path]:
    """A stand-in for the image: HOME, WORKDIR with the copied files, a fresh venv with the pip command."""
    base_minor = dockerfile.base_image.split(":", 1)[1].split("-")[0]
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if system != base_minor:
        pytest.skip(f"/usr/bin/python3 is {system}, the image uses {base_minor}")
    missing = [
        pkg for pkg in dockerfile.apt_packages if subprocess.run(["dpkg", "-s", pkg], capture_output=True).returncode
    ]
    if missing:
        pytest.fail(f"apt packages of the Dockerfile missing on this machine: {missing}")

    root = Path(tempfile.mkdtemp(prefix="lectern-image-"))
    root.chmod(0o755)
    home = root / dockerfile.env["HOME"].lstrip("/")
    workdir = root / dockerfile.workdir.lstrip("/")
    venv = root / "venv"
    rules = dockerignore_rules(REPO / ".dockerignore")
    workdir.mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(root)], check=True)
    user = {"user": NONROOT_UID, "group": NONROOT_UID, "extra_groups": []}
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, **user)  # type: ignore[arg-type]
    pip_done = False
    for keyword, args in dockerfile.instructions:
        if keyword == "COPY":
            *sources, dest = [w for w in args.split() if not w.startswith("--")]
            copy_context(REPO, sources, workdir / dest, rules)
            subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(workdir)], check=True)
        elif keyword == "RUN" and "pip install" in args:
            pip = dockerfile.pip_commands[0]
            env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home)}
            subprocess.run(
                [str(venv / "bin" / pip[0]), *pip[1:]],
                cwd=workdir,
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
                **user,  # type: ignore[arg-type]
            )
            pip_done = True
    assert pip_done, "the Dockerfile's pip command never ran"
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_cmd_serves_health_on_7860_as_uid_1000(dockerfile: Dockerfile, image_root: Path) -> None:
    """The Dockerfile's CMD, as uid 1000 with only its ENV and PORT=7860, answers /health 200."""
    if _port_busy(SPACE_PORT):
        pytest.skip(f"port {SPACE_PORT} is busy on this machine")
    home = image_root / dockerfile.env["HOME"].lstrip("/")
    workdir = image_root / dockerfile.workdir.lstrip("/")
    venv_bin = image_root / "venv" / "bin"
    env = {key: value.replace("/home/user", str(home)) for key, value in dockerfile.env.items()}
    # The image's python3 is the one pip installed into; here that is the fresh venv.
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '').replace('$PATH', '')}:/usr/local/bin:/usr/bin:/bin"
    assert "tests" not in os.listdir(workdir), ".dockerignore should keep tests out of the image"
    stack = Stack(
        repo=workdir,
        user=NONROOT_UID,
        port=SPACE_PORT,
        data_dir=Path(env["DATA_DIR"]),
        command=[str(workdir / dockerfile.cmd[0]), *dockerfile.cmd[1:]],
        python=str(venv_bin / "python"),
    )
    stack.env = {**env, "USER": "user", "LANG": "C.UTF-8"}
    try:
        stack.start(wait=False)
        stack.env["LECTERN_PYTHON"] = str(venv_bin / "python")  # for supervisorctl only, after the start
        stack.wait_healthy(timeout=60)
        response = httpx.get(stack.url("/health"), timeout=5)
        assert response.status_code == 200
        assert response.json() == {"status": "healthy"}
        banner = httpx.get(stack.url("/"), timeout=5).json()
        assert banner["status"] == "online"
        wait_for(
            lambda: all(stack.program_states().get(p, ("?",))[0] == "RUNNING" for p in ("redis", "api", "worker")),
            timeout=15,
            message="programs RUNNING",
        )
        assert stack.proc is not None
        stack.proc.terminate()
        assert stack.proc.wait(timeout=15) == 0
    finally:
        stack.cleanup()
