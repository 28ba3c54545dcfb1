"""The ops dashboard at ``/ui``: the built web UI (``web/``, built into this package's ``ui/`` folder by
``make web``, shipped as package data so a cluster serves it without Node), from SIRA's own app, same
origin as the API it reads.

Caching: the hashed assets (``/ui/assets/*``, named by their content) are immutable for a year; the page
itself is revalidated on every load, so a deploy is seen at once. Every file carries an ETag, and a request
that names it (``If-None-Match``) is answered 304 with no body. Compression: the build writes each text file
also gzip- and Brotli-compressed beside it (``web/precompress.mjs``); a browser that accepts one gets it
(``Content-Encoding``, ``Vary: Accept-Encoding``), compressed once at build time, never per request. GET and
HEAD are answered.

Every answer under ``/ui`` (files, the redirect, errors) carries a strict Content-Security-Policy: scripts only
from this origin (no inline script, no eval), data only from this origin's API, no frames, no forms posting
elsewhere, no plugins. Styles allow inline ``style`` because the component and chart libraries set element
styles (a style cannot run code). The UI needs no credentials to load: everything it shows comes from the
API, which checks the caller's roles on every call.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from sira.http.deps import error_response

UI_DIR = Path(__file__).resolve().parent / "ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'; object-src 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer", "x-frame-options": "DENY",
                    "cross-origin-opener-policy": "same-origin"}
IMMUTABLE = "public, max-age=31536000, immutable"
# the encodings the build writes beside each text file, the smallest first (web/precompress.mjs)
PRECOMPRESSED = (("br", ".br"), ("gzip", ".gz"))

router = APIRouter(include_in_schema=False)


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _not_found(code: str, message: str) -> Response:
    return _secured(error_response(404, code, message))


def accepts(accept_encoding: str, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts ``coding``: named with a weight above 0, or not named and
    ``*`` is (RFC 9110, 12.5.3)."""
    weights: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        name, *params = (p.strip() for p in part.split(";"))
        try:
            weights[name] = float(next((p[2:] for p in params if p.startswith("q=")), "1"))
        except ValueError:
            continue
    return weights.get(coding, weights.get("*", 0.0)) > 0


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _file(request: Request, path: Path, cache: str) -> Response:
    """``path``, or its precompressed copy when the browser accepts that coding; 304 when the browser holds it."""
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    accept_encoding = request.headers.get("accept-encoding", "")
    served, coding = path, None
    for name, suffix in PRECOMPRESSED:
        candidate = path.with_name(path.name + suffix)
        if accepts(accept_encoding, name) and candidate.is_file():
            served, coding = candidate, name
            break
    stat = served.stat()
    # one tag per representation: the gzip copy's is not the Brotli copy's nor the plain file's
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}{f"-{coding}" if coding else ""}"'
    headers = {**SECURITY_HEADERS, "cache-control": cache, "etag": etag, "vary": "accept-encoding"}
    if _matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    if coding:
        headers["content-encoding"] = coding
    return FileResponse(served, media_type=media_type, headers=headers, stat_result=stat)


@router.api_route("/ui", methods=["GET", "HEAD"])
async def ui_root() -> Response:
    return _secured(RedirectResponse("/ui/", status_code=308))


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def ui(path: str, request: Request) -> Response:
    """A built asset, or the page for any other path under /ui (the UI routes in the browser)."""
    index = UI_DIR / "index.html"
    if not index.is_file():
        return _not_found("ui_not_built", "the web UI is not built into this installation: run `make web` "
                          "(Node.js 20.19 or newer) and reinstall, or install a wheel that carries it")
    if path:
        if "\x00" in path:  # percent-decoded from %00: no file is named so (and resolve() would raise)
            return _not_found("not_found", "no such path")
        try:
            found = (UI_DIR / path).resolve()
            is_file = found.is_relative_to(UI_DIR) and found.is_file()
        except OSError:  # a part longer than the file system allows (ENAMETOOLONG): no file, no route is named so
            return _not_found("not_found", "no such path")
        if is_file:
            return _file(request, found, IMMUTABLE if path.startswith("assets/") else "no-cache")
        if path.startswith("assets/"):  # a stale page asking for an asset of an older build
            return _not_found("not_found", f"no such asset: {path}")
    return _file(request, index, "no-cache")
