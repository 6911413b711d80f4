"""A small reader for the repo's Dockerfile and .dockerignore (enough to replay the build without Docker)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass
class Dockerfile:
    """The instructions of a single-stage Dockerfile, in order."""

    instructions: list[tuple[str, str]]
    base_image: str = ""
    apt_packages: list[str] = field(default_factory=list)
    user: str = ""
    useradd_uid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: list[tuple[list[str], str, str | None]] = field(default_factory=list)
    pip_commands: list[list[str]] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse FROM, RUN (apt-get install, useradd, pip install), USER, ENV, WORKDIR, COPY, EXPOSE, CMD."""
    lines = _logical_lines(path.read_text(encoding="utf-8"))
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]
    df = Dockerfile(instructions=instructions)
    for keyword, args in instructions:
        if keyword == "FROM":
            df.base_image = args.split()[0]
        elif keyword == "RUN":
            for part in re.split(r"&&|;", args):
                words = shlex.split(part)
                if words[:2] == ["apt-get", "install"]:
                    df.apt_packages += [w for w in words[2:] if not w.startswith("-")]
                elif words[:1] == ["useradd"] and "-u" in words:
                    df.useradd_uid = int(words[words.index("-u") + 1])
                elif words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                    df.pip_commands.append(words)
        elif keyword == "USER":
            df.user = args.strip()
        elif keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                df.env[key] = _expand(value, df.env)
        elif keyword == "WORKDIR":
            target = _expand(args.strip(), df.env)
            df.workdir = target if target.startswith("/") else str(PurePosixPath(df.workdir) / target)
        elif keyword == "COPY":
            words = shlex.split(args)
            chown = next((w.split("=", 1)[1] for w in words if w.startswith("--chown=")), None)
            paths = [w for w in words if not w.startswith("--")]
            df.copies.append((paths[:-1], paths[-1], chown))
        elif keyword == "EXPOSE":
            df.expose += [int(p.split("/")[0]) for p in args.split()]
        elif keyword == "CMD":
            df.cmd = json.loads(args) if args.strip().startswith("[") else ["/bin/sh", "-c", args]
    return df


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order (Docker's last-match-wins semantics)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not path.exists():
        return rules
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """True when the context path `rel` (or one of its parent folders) is excluded."""
    parts = PurePosixPath(rel).parts
    for depth in range(1, len(parts) + 1):
        candidate = "/".join(parts[:depth])
        excluded = False
        for exception, regex in rules:
            if regex.match(candidate):
                excluded = not exception
        if excluded:
            return True
    return False


def copy_context(context: Path, sources: list[str], dest: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> None:
    """Replay `COPY <sources> <dest>` from a build context, honouring .dockerignore."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in sources:
        src = (context / source).resolve()
        if src.is_file():
            shutil.copy2(src, dest / src.name)
            continue
        for root, dirs, files in os.walk(src):
            rel_root = Path(root).relative_to(context)
            dirs[:] = [d for d in dirs if not is_ignored((rel_root / d).as_posix(), rules)]
            for name in files:
                rel = (rel_root / name).as_posix()
                if is_ignored(rel, rules):
                    continue
                target = dest / Path(root).relative_to(src) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, target, follow_symlinks=False)
