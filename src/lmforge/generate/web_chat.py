"""The chat page at `/`: talk to the served model from a browser, with nothing to install or build.

Static files (generate/chat_page/: the page, its script, its style sheet, its icon) that the server
hands out as they are. The script talks to the same API as any other client (GET /v1/models,
POST /v1/chat/completions with "stream": true), so the page has no endpoint or privilege of its own.

The files load without the API key (the page has nowhere else to ask for it); the API behind them
still needs it. A Content-Security-Policy lets the page load and connect to this server only: no
external fonts or scripts (it works offline), and text the model writes cannot pull anything in.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

# path -> (file in chat_page/, media type)
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
PAGE_PATHS = tuple(PAGE_FILES)  # open without the API key, like /health
# 'self' only: no inline script or style, no other origin; the page cannot be framed (clickjacking).
CONTENT_SECURITY_POLICY = ("default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
                           "object-src 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # the script is run as a script only if served as one
    "Cache-Control": "no-cache",  # a newer lmforge's page replaces the old one at once
}


def page_file(name: str) -> bytes:
    """A file of the page, as shipped in the package (package data, see pyproject.toml)."""
    return (resources.files("lmforge") / "generate" / "chat_page" / name).read_bytes()


def file_route(content: bytes, media_type: str):
    """An endpoint answering with one file (a function of its own, so each route keeps its own file)."""
    async def serve_file() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)
    return serve_file


def add_chat_page(app: FastAPI) -> None:
    """GET / and the files it loads; they are read once, now."""
    for path, (name, media_type) in PAGE_FILES.items():
        app.add_api_route(path, file_route(page_file(name), media_type), methods=["GET"], include_in_schema=False)
