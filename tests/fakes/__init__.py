"""Fake upstream providers for the tests, served on 127.0.0.1 only."""
from __future__ import annotations

from aiohttp import web


async def serve_loopback(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free port of 127.0.0.1; returns (runner, "http://127.0.0.1:<port>")."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
