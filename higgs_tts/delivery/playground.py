"""The web playground: one static page, served from the package, that calls this server's own API.

    GET /             -> 307 to /playground
    GET /playground   the page (playground.html)
    GET /playground/{playground.js | playground.css}

The page holds no data, so it is served without the API key (`middleware.PUBLIC_PAGES`); every
API call it makes sends the key typed into its key field (kept in the tab's sessionStorage). Its
Content-Security-Policy allows this origin only (plus `blob:`/`data:` for the audio it makes), so
the page cannot load or send anything elsewhere: no CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from .middleware import openai_error

STATIC = Path(__file__).with_name("static")
# The only files served: a fixed list, so no path ever reaches the file system from a request.
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def router() -> APIRouter:
    api = APIRouter(include_in_schema=False)

    @api.get("/")
    def root():
        return RedirectResponse("/playground")

    @api.get("/playground")
    def page():
        return FileResponse(STATIC / "playground.html", media_type="text/html", headers=HEADERS)

    @api.get("/playground/{name}")
    def asset(name: str):
        if name not in ASSETS:
            return openai_error(404, f"GET /playground/{name}: no such file (there are {', '.join(ASSETS)})",
                                "not_found")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)

    return api
