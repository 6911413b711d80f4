"""The Space's front door: the reader playground (`GET /` for browsers) and the operator console (`/admin`).

Both pages are static HTML in `api/web/`, with their scripts and styles served from `/static/` (no build
step, no CDN, nothing loaded from another origin). They carry a strict Content-Security-Policy: scripts,
styles and requests from this origin only, no inline code, Trusted Types on (so no script can assign
markup to `innerHTML`), and `frame-ancestors` naming the Hugging Face Space page (https://huggingface.co,
the parent of the Space's iframe) plus FRAME_ANCESTORS. They are the only responses that may be framed:
`api.middleware` gives every other response `X-Frame-Options: DENY`.

`GET /` stays the JSON banner for every client that does not prefer HTML (`api.routers.health`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from api.deps import SettingsDep
from shared.platform.config import Settings

__all__ = ["SPACE_PARENT_ORIGIN", "install_pages", "page_csp", "page_response", "prefers_html"]

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
#: The page that frames a Space (its iframe points at https://<owner>-<space>.hf.space).
SPACE_PARENT_ORIGIN = "https://huggingface.co"
PAGES = {"reader": "reader.html", "admin": "admin.html"}
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_OTHER_TYPES = frozenset({"application/json", "application/*", "*/*"})

router = APIRouter(include_in_schema=False)


def prefers_html(accept: str | None) -> bool:
    """True when `Accept` ranks text/html above JSON and `*/*` (a browser); curl, SDKs and monitors get JSON."""
    html = other = 0.0
    for item in (accept or "").split(","):
        media, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media in _HTML_TYPES:
            html = max(html, quality)
        elif media in _OTHER_TYPES:
            other = max(other, quality)
    return html > other


def frame_ancestors(settings: Settings) -> list[str]:
    """Who may frame the pages: the Space page, then FRAME_ANCESTORS."""
    extra = [origin for origin in settings.frame_ancestors if origin != SPACE_PARENT_ORIGIN]
    return [SPACE_PARENT_ORIGIN, *extra]


def page_csp(settings: Settings) -> str:
    """The pages' Content-Security-Policy."""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'none'; base-uri 'none'; require-trusted-types-for 'script'; trusted-types 'none'; "
        f"frame-ancestors {' '.join(frame_ancestors(settings))}"
    )


@lru_cache(maxsize=len(PAGES))
def _page_body(name: str) -> bytes:
    return (WEB_DIR / PAGES[name]).read_bytes()


def page_response(name: str, settings: Settings, *, vary_accept: bool = False) -> Response:
    """One of the HTML pages with its CSP (`vary_accept` for `/`, whose answer depends on `Accept`)."""
    headers = {"Content-Security-Policy": page_csp(settings), "Cache-Control": "no-cache"}
    if vary_accept:
        headers["Vary"] = "Accept"
    return Response(_page_body(name), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/admin")
async def admin_console(settings: SettingsDep) -> Response:
    """The operator console (the admin key is typed in the page and kept in its sessionStorage)."""
    return page_response("admin", settings)


class AssetFiles(StaticFiles):
    """Starlette's static files, revalidated on every load (ETag), so a deploy never mixes old and new."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """The file, with `Cache-Control: no-cache`."""
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_pages(app: FastAPI) -> None:
    """Serve `/admin` and the pages' assets under `/static/` (`/` is `api.routers.health`'s)."""
    app.include_router(router)
    app.mount("/static", AssetFiles(directory=STATIC_DIR), name="static")
