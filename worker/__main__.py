"""Worker entry point: `python -m worker run` starts the arq worker."""

from __future__ import annotations

import argparse
import sys

from shared.config import ConfigError, load_settings
from shared.constants import ROLE_WORKER
from shared.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m worker", description="Lectern's arq worker and CLI.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the arq worker (supervisord's `worker` program)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(settings, role=ROLE_WORKER)
    if args.command == "run":
        from worker.settings import build_worker

        build_worker(settings).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
