"""Exit 0 when every pinned requirement (`name==version`) of a requirements file is installed.

scripts/setup uses it to skip pip for a venv that already has everything (a shared or read-only venv,
or a fresh clone pointed at an existing VENV_DIR) without touching the network. Anything it cannot
check offline (unpinned or URL requirements) counts as "not satisfied", so pip runs.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)\s*(;.*)?$")


def unsatisfied(path: Path, seen: set[Path] | None = None) -> list[str]:
    """The requirements of `path` (following -r includes) that are not installed at their pinned version."""
    seen = seen if seen is not None else set()
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    problems: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            problems += unsatisfied(path.parent / line.split(None, 1)[1], seen)
            continue
        match = _PIN.match(line)
        if match is None:
            problems.append(f"{line} (not a plain pin)")
            continue
        name, _extras, version, _marker = match.groups()
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} (missing)")
            continue
        if installed != version:
            problems.append(f"{name} ({installed} installed, {version} wanted)")
    return problems


def main(argv: list[str]) -> int:
    """CLI: check_requirements.py REQUIREMENTS_FILE."""
    problems = unsatisfied(Path(argv[1] if len(argv) > 1 else "requirements.txt"))
    for problem in problems:
        print(f"check_requirements: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
