"""Run the whole service the way the README does (`scripts/start` -> supervisord), for e2e tests.

`Stack` starts `scripts/start` from a repo directory with a temporary DATA_DIR and a free port,
optionally as a non-root user, with stdout/stderr as pipes created by this (root) process, collects
every output line, waits for `/health`, and stops everything with SIGTERM. Always use it as a context
manager or through the `stack_factory` fixture so nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_server import free_port

REPO = Path(__file__).resolve().parents[2]
NONROOT_UID = 1000


def wait_for(predicate: Any, *, timeout: float, interval: float = 0.1, message: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message} (last error: {last_exc!r})")


def runtime_python() -> str:
    """A Python (in a venv with requirements.txt) that uid 1000 can execute.

    The test venv itself when every parent directory is world-traversable and it was built from the
    system Python; otherwise a cached venv in /tmp built from /usr/bin/python3.
    """
    exe = Path(sys.executable)
    if _world_usable(exe) and str(Path(sys.base_prefix)).startswith("/usr"):
        return str(exe)
    reqs = (REPO / "requirements.txt").read_bytes()
    import hashlib

    venv = Path(tempfile.gettempdir()) / f"lectern-venv-{hashlib.sha256(reqs).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(REPO / "requirements.txt"),
            ],
            check=True,
        )
        (venv / ".complete").touch()
        subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    return str(python)


def _world_usable(path: Path) -> bool:
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if parent.is_dir() and not mode & 0o001:
            return False
    return True


def copy_repo(dest: Path, *, owner_uid: int | None = None) -> Path:
    """Copy the repo's tracked working files (no .venv, data, caches) to `dest`."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "data", "__pycache__", ".mypy_cache", ".ruff_cache", "node_modules", ".pytest_cache"
    )
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    if owner_uid is not None:
        for root, dirs, files in os.walk(dest):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), owner_uid, owner_uid)
        os.chown(dest, owner_uid, owner_uid)
    return dest


class Stack:
    """One running supervisord stack."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        repo: Path = REPO,
        data_dir: Path | None = None,
        port: int | None = None,
        user: int | None = None,
        command: list[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.repo = repo
        self.port = port or free_port()
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="lectern-data-")
            data_dir = Path(self._tmp) / "data"
        self.data_dir = data_dir
        self.user = user
        self.command = command or [str(repo / "scripts" / "start")]
        base = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "TZ"}}
        base.update(
            {
                "PORT": str(self.port),
                "DATA_DIR": str(self.data_dir),
                "WEB_CONCURRENCY": "2",
                "LECTERN_PYTHON": python or runtime_python(),
                "LOG_FORMAT": "json",
            }
        )
        if user is not None:
            home = pwd.getpwuid(user).pw_dir
            base.update({"HOME": home, "USER": pwd.getpwuid(user).pw_name})
        base.update(env or {})
        self.env = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 90.0) -> Stack:
        """Start the stack; by default wait for /health to answer 200."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.data_dir.parent, self.user, self.user)
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user, group=self.user, extra_groups=[])
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.repo,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        for stream, sink in ((self.proc.stdout, self.stdout_lines), (self.proc.stderr, self.stderr_lines)):
            thread = threading.Thread(target=_pump, args=(stream, sink), daemon=True)
            thread.start()
            self._readers.append(thread)
        if wait:
            self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, *, timeout: float = 90.0) -> float:
        """Wait for GET /health == 200; return the seconds it took."""
        started = time.monotonic()

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"stack exited with {self.proc.returncode}:\n{self.output_tail()}")
            return httpx.get(self.url("/health"), timeout=2).status_code == 200

        try:
            wait_for(healthy, timeout=timeout, interval=0.1, message="/health")
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}\n--- output ---\n{self.output_tail()}") from None
        return time.monotonic() - started

    def wait_worker(self, *, timeout: float = 60.0) -> None:
        """Wait until /health/ready reports the worker up."""

        def worker_up() -> bool:
            body = httpx.get(self.url("/health/ready"), timeout=5).json()
            return bool(body["checks"]["worker"]["status"] == "up")

        wait_for(worker_up, timeout=timeout, interval=0.5, message="worker up")

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM supervisord and wait; SIGKILL the group if it overstays. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the session
        for thread in self._readers:
            thread.join(timeout=5)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop and remove the temporary DATA_DIR."""
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- helpers -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of a path on this stack."""
        return self.base_url + path

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client bound to this stack."""
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base_url, **kwargs)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run supervisorctl against this stack's socket."""
        sock = self.data_dir / "run" / "supervisor.sock"
        conf = str(self.repo / "supervisord.conf")
        env = {**self.env, "LECTERN_RUN_DIR": str(self.data_dir / "run"), "LECTERN_HOME": str(self.repo)}
        return subprocess.run(
            [self.env["LECTERN_PYTHON"], "-m", "supervisor.supervisorctl", "-c", conf, "-s", f"unix://{sock}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def program_states(self) -> dict[str, tuple[str, int | None]]:
        """{program: (state, pid)} from supervisorctl status."""
        states: dict[str, tuple[str, int | None]] = {}
        for line in self.supervisorctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = None
                if "pid" in parts:
                    pid = int(parts[parts.index("pid") + 1].rstrip(","))
                states[parts[0]] = (parts[1], pid)
        return states

    def output(self) -> str:
        """Everything the stack printed so far (stdout then stderr)."""
        return "\n".join(self.stdout_lines) + "\n" + "\n".join(self.stderr_lines)

    def output_tail(self, lines: int = 80) -> str:
        """The last lines of output."""
        return "\n".join((self.stdout_lines + self.stderr_lines)[-lines:])


def _pump(stream: Any, sink: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()
