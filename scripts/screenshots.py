#!/usr/bin/env python3
"""Screenshots of the real pages for the README: `.venv/bin/python scripts/screenshots.py [OUT_DIR]`.

Starts the whole stack the way `scripts/run` does (embedded mode, offline: extractive answers from the
sample docs, which are ingested at start), drives Debian's headless Chromium over the DevTools pipe
(`tests/utils/browser.py`, the page tests' driver; so it needs requirements-dev.txt and `chromium`),
and writes PNGs to OUT_DIR (default `docs/screenshots`):

- `reader.png`: `/` signed in, after one question (desktop width);
- `reader-phone.png`: the same page at phone width;
- `admin.png`: `/admin` unlocked, after ingesting DOCS_DIR.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.utils.browser import Page, chromium  # noqa: E402
from tests.utils.stack import Stack, wait_for  # noqa: E402

QUESTION = "How does an ultrasonic sensor measure distance?"


def _ask(page: Page, question: str) -> None:
    page.type("#question", question)
    page.click("#ask")
    page.wait_for("[...document.querySelectorAll('#messages .answer')].pop()?.dataset.state === 'done'", timeout=60)


def main() -> None:
    """Start the stack, take the screenshots, stop everything."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    admin_key = secrets.token_urlsafe(16)  # this run's only; never printed
    with Stack(env={"ADMIN_API_KEY": admin_key, "LOG_LEVEL": "WARNING"}) as stack:
        stack.wait_worker(timeout=90)
        with stack.client(headers={"X-API-Key": admin_key}) as client:

            def ingested() -> bool:
                jobs = client.get("/api/ingest/jobs?limit=5").json()["jobs"]
                return bool(jobs) and all(job["status"] == "succeeded" for job in jobs)

            wait_for(ingested, timeout=120, interval=0.5, message="the sample docs")
        with chromium() as browser:
            page = browser.open(stack.url("/"), width=1280, height=860)
            page.click("#show-sign-up")
            page.type("#sign-up-name", "Ada")
            page.type("#sign-up-email", f"ada-{secrets.token_hex(3)}@example.com")
            page.type("#sign-up-password", secrets.token_urlsafe(12))
            page.click("#sign-up-form button[type=submit]")
            page.wait_for("!document.getElementById('signed-in').hidden")
            _ask(page, QUESTION)
            page.wait_for("document.querySelectorAll('#session-list li').length === 1")
            page.eval("document.getElementById('account-status').textContent = ''")
            page.eval("document.activeElement.blur()")
            page.screenshot(out / "reader.png")
            page.close()

            phone = browser.open(stack.url("/"), width=390, height=844, mobile=True)
            _ask(phone, QUESTION)
            phone.eval("document.activeElement.blur(); window.scrollTo(0, 0)")
            phone.screenshot(out / "reader-phone.png")
            phone.close()

            console = browser.open(stack.url("/admin"), width=1280, height=860)
            console.type("#admin-key", admin_key)
            console.click("#key-form button[type=submit]")
            console.wait_for("!document.getElementById('console').hidden")
            console.click("#ingest-docs-dir")
            console.wait_for("document.getElementById('job-status').textContent === 'succeeded'", timeout=120)
            console.wait_for("document.querySelectorAll('#circuits-table tbody tr').length === 3")
            console.wait_for("document.querySelectorAll('#metrics dt').length > 3")
            console.eval("document.activeElement.blur()")
            console.screenshot(out / "admin.png")
            console.close()
    for name in ("reader.png", "reader-phone.png", "admin.png"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
