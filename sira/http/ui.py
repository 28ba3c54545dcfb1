"""The ops dashboard at ``/ui``: the built web UI (``web/``, built into this package's ``ui/`` folder by
``make web``, shipped as package data so a cluster serves it without Node), from SIRA's own app, same
origin as the API it reads.

Caching: the hashed assets (``/ui/assets/*``, named by their content) are immutable for a year; the page
itself is revalidated on every load, so a deploy is seen at once. Every answer carries a strict
Content-Security-Policy: scripts only from this origin (no inline script, no eval), data only from this
origin's API, no frames, no forms posting elsewhere, no plugins. Styles allow inline ``style`` because the
component and chart libraries set element styles (a style cannot run code). The UI needs no credentials
to load: everything it shows comes from the API, which checks the caller's roles on every call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
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

router = APIRouter(include_in_schema=False)


def _file(path: Path, cache: str) -> Response:
    return FileResponse(path, headers={**SECURITY_HEADERS, "cache-control": cache})


@router.get("/ui")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/{path:path}")
async def ui(path: str) -> Response:
    """A built asset, or the page for any other path under /ui (the UI routes in the browser)."""
    index = UI_DIR / "index.html"
    if not index.is_file():
        return error_response(404, "ui_not_built", "the web UI is not built into this installation: run `make web` "
                              "(Node.js 20.19 or newer) and reinstall, or install a wheel that carries it")
    if path:
        if "\x00" in path:  # percent-decoded from %00: no file is named so (and resolve() would raise)
            return error_response(404, "not_found", "no such path")
        try:
            found = (UI_DIR / path).resolve()
            is_file = found.is_relative_to(UI_DIR) and found.is_file()
        except OSError:  # a part longer than the file system allows (ENAMETOOLONG): no file, no route is named so
            return error_response(404, "not_found", "no such path")
        if is_file:
            return _file(found, IMMUTABLE if path.startswith("assets/") else "no-cache")
        if path.startswith("assets/"):  # a stale page asking for an asset of an older build
            return error_response(404, "not_found", f"no such asset: {path}")
    return _file(index, "no-cache")
