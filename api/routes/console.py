"""The web console: static files of ``api/console/`` served at ``/console`` by the API itself.

Plain ES modules, no build step: what is in the folder is what the browser runs. The console uses
only the public API (the same calls the README documents) with the key the person signs in with,
kept in the tab's session storage and sent as a header, never in a URL.

Every answer carries a strict Content-Security-Policy (no inline scripts or styles, nothing from
other origins: the console works on a machine with no internet) and an ETag, so that the browser
revalidates the small files cheaply (``no-cache``) and always runs the version the server has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from api.errors import not_found

router = APIRouter(include_in_schema=False)

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self' ws: wss:",
        "media-src 'self' blob:",
        "img-src 'self' data: blob:",
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int) -> Asset:
    """The file's bytes and ETag, cached per modification time (an edited file is read again)."""
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, CONTENT_TYPES[path.suffix], etag)


def find_asset(name: str) -> Asset:
    """One file of the console folder by its relative name; 404 for anything else (no traversal,
    no hidden files, only the known kinds)."""
    parts = name.split("/")
    if not name or any(not p or p.startswith(".") for p in parts):
        raise not_found("file")
    path = CONSOLE_DIR.joinpath(*parts).resolve()
    if not path.is_relative_to(CONSOLE_DIR) or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise not_found("file")
    return _load(path, path.stat().st_mtime_ns)


def _answer(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/console")
def console_page(request: Request) -> Response:
    return _answer(request, find_asset("index.html"))


@router.get("/console/")
def console_slash() -> Response:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/{name:path}")
def console_asset(name: str, request: Request) -> Response:
    return _answer(request, find_asset(name))
