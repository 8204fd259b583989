"""The console's static files (index.html, console.js, console.css from proxy/console/static/),
read once when the app is built and served from memory with a strict Content-Security-Policy:
only this origin's script and style, no inline code, images from this origin or blob: URLs
(the charts), no framing, no form posts. The page holds no data: it signs in with a key kept
in the browser's sessionStorage and calls the JSON API with it as a Bearer header."""
from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin"}


def _load() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, content type, ETag) of every file shipped in proxy/console/static/."""
    files = {}
    for entry in resources.files("proxy.console").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if entry.is_file() and suffix in _TYPES:
            data = entry.read_bytes()
            files[entry.name] = (data, _TYPES[suffix], '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"')
    return files


def add_routes(router: web.UrlDispatcher) -> None:
    """GET /console (the page) and /console/static/{name} (its script and style)."""
    files = _load()

    def serve(name: str, request: web.Request) -> web.Response:
        found = files.get(name)
        if found is None:
            raise web.HTTPNotFound()          # the edge renders it in the error envelope
        data, ctype, etag = found
        headers = {**HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, headers={**headers, "Content-Type": ctype})

    async def page(request: web.Request) -> web.Response:
        return serve("index.html", request)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return serve(name if name != "index.html" else "", request)

    router.add_get("/console", page)
    router.add_get("/console/", page)
    router.add_get("/console/static/{name}", static)
