"""The baseline: a bare aiohttp forwarder. One pooled ClientSession; the body goes upstream as
read, the answer comes back as is (SSE chunk by chunk, as it arrives). No parsing, no checks.

    python -m bench.forwarder --port 9002 --upstream http://127.0.0.1:9001
"""
from __future__ import annotations

import argparse

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from bench.fake_upstream import new_loop

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", ClientSession)
UPSTREAM_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(request.method, url, data=body, headers=UPSTREAM_HEADERS) as up:
        ctype = up.headers.get("Content-Type", "application/json")
        if not ctype.startswith("text/event-stream"):
            return web.Response(body=await up.read(), status=up.status, headers={"Content-Type": ctype})
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def session_ctx(app: web.Application):
    connector = TCPConnector(limit=1024)
    async with ClientSession(connector=connector, auto_decompress=False,
                             timeout=ClientTimeout(total=300)) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--upstream", required=True, help="upstream origin, e.g. http://127.0.0.1:9001")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port,
                access_log=None, print=None, backlog=1024, loop=new_loop())


if __name__ == "__main__":
    main()
