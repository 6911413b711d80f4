"""Worker entry point: `python -m worker run` starts the arq worker; `python -m worker ingest PATH...`
queues documents through the same code path as `POST /api/ingest` and, with `--wait`, shows progress."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

from shared.ingestion.inputs import ALLOWED_SUFFIXES, DocumentInput, load_directory
from shared.ingestion.jobs import get_job, submit_ingest
from shared.platform.config import ConfigError, Settings, load_settings
from shared.platform.constants import ROLE_WORKER
from shared.platform.errors import LecternError
from shared.platform.logging import configure_logging

ROLE_CLI = "cli"


def collect_documents(paths: list[str]) -> list[DocumentInput]:
    """Documents from files and directories (directory files keep their path relative to it)."""
    documents: list[DocumentInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            documents.extend(load_directory(path))
        elif path.is_file() and path.suffix.lower() in ALLOWED_SUFFIXES:
            documents.append(DocumentInput(source=path.name, content=path.read_text(encoding="utf-8")))
        else:
            raise FileNotFoundError(f"{raw}: not a directory or a .md/.mdx/.txt file")
    return documents


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


async def ingest_command(settings: Settings, paths: list[str], *, wait: bool, out: TextIO = sys.stderr) -> int:
    """Queue the documents; with `wait`, draw a progress bar until the job ends. Returns the exit code."""
    from shared.platform.clients import build_services

    documents = collect_documents(paths)
    services = await build_services(settings, role=ROLE_CLI)
    try:
        job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=documents)
        print(f"queued job {job.id} ({job.documents_total} documents)", file=out)
        if not wait:
            print(job.id)
            return 0
        interactive = out.isatty()
        last = ""
        while True:
            job = await get_job(sessions=services.sessions, job_id=job.id)
            line = (
                f"{_bar(job.documents_done, job.documents_total)} {job.documents_done}/{job.documents_total} documents"
                f", {job.documents_skipped} unchanged, {job.chunks_upserted} chunks written [{job.status}]"
            )
            if line != last:
                print(("\r" + line) if interactive else line, end="" if interactive else "\n", file=out, flush=True)
                last = line
            if job.status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.5)
        if interactive:
            print(file=out)
        for error in job.errors or []:
            print(f"error: {error.get('source') or 'job'}: {error.get('message')}", file=out)
        print(job.id)
        return 0 if job.status == "succeeded" else 1
    finally:
        await services.aclose()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m worker", description="Lectern's arq worker and CLI.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the arq worker, or only the embedded store (supervisord's `worker` program)")
    ingest = sub.add_parser("ingest", help="queue markdown files or folders for ingestion")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help=".md/.mdx/.txt files or folders of them")
    ingest.add_argument("--wait", action="store_true", help="show progress until the job ends; exit 1 if it failed")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(settings, role=ROLE_WORKER if args.command == "run" else ROLE_CLI)
    if args.command == "run":
        if settings.owns_embedded_store and "worker" not in settings.roles:  # `store` alone: serve it, no jobs
            from worker.store import serve_store

            asyncio.run(serve_store(settings))
            return 0
        from worker.settings import build_worker

        build_worker(settings).run()
        return 0
    try:
        return asyncio.run(ingest_command(settings, args.paths, wait=args.wait))
    except (LecternError, FileNotFoundError) as exc:
        print(f"error: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
