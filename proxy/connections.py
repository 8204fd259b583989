"""The connection layer under the app: a header-read timeout, a per-worker connection cap, and
malformed requests (oversized headers, a bad request line) answered in the error envelope
instead of aiohttp's plain-text HTTP/1.0 400 that echoes the offending bytes.

aiohttp has no header-read timeout, so `Protocol` adds one: a request's headers must be
complete within `header_timeout` of the connection opening, or of the first byte of the next
request on a keep-alive connection (nginx's client_header_timeout); otherwise the connection
is closed without an answer. An idle keep-alive connection is closed after
`keepalive_timeout` (aiohttp's own timer). A connection over `max_connections` is accepted,
and its first request is answered 503 `too_many_connections` with `Retry-After` and
`Connection: close`, without reaching the app: a status every HTTP client understands and retries,
where a connection closed unread looks like a network fault. It holds its descriptor for at
most `header_timeout`.
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import LineTooLong

from proxy.config import ServerConfig
from proxy.errors import GatewayError, InvalidRequest, Unavailable
from proxy.handlers import request_id

log = structlog.get_logger("modelway")
MAX_LINE = 8190     # bytes of the request line (aiohttp's default)
MAX_FIELD = 8192    # bytes of one header line; differs from MAX_LINE so LineTooLong tells them apart
MAX_HEADERS = 128


class Protocol(web.RequestHandler):
    """aiohttp's request handler (one per connection) with a header-read timer."""

    def __init__(self, manager: "Server", *, header_timeout: float, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timer = self._loop.call_later(self.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:        # a request's headers are complete
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
        elif self._header_timer is None and self._waiter is not None:
            # the first bytes of the next request on an idle keep-alive connection
            self._header_timer = self._loop.call_later(self.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._waiter is not None and not self._messages:   # still waiting for a request's headers
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse or hand to the app: the error envelope with an
        x-request-id, over HTTP/1.1, and none of the request's bytes (a header may be a key)."""
        if request.writer.output_size > 0:    # as aiohttp: an answer has begun, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        rid = request_id(request)
        err = _error_for(status, exc)
        if err.status >= 500:
            log.error("unhandled_error", request_id=rid, error=type(exc).__name__ if exc else None)
        else:
            log.info("bad_http_request", request_id=rid, status=err.status, code=err.code)
        # aiohttp builds an unparsable request as HTTP/1.0; the answer goes out as HTTP/1.1
        request._version = HttpVersion11
        resp = web.Response(body=err.to_json(rid), status=err.status, content_type="application/json",
                            headers={"x-request-id": rid})
        resp.force_close()
        return resp


def _error_for(status: int, exc: BaseException | None) -> GatewayError:
    if isinstance(exc, LineTooLong):
        if exc.args[1] == MAX_FIELD:
            return _headers_too_large()
        return InvalidRequest(f"The request line is over {MAX_LINE} bytes.", code="uri_too_long", status=414)
    if exc is not None and "Too many headers" in str(exc):
        return _headers_too_large()
    if status == 400:
        return InvalidRequest("Malformed HTTP request.", code="bad_http_request")
    return GatewayError("The gateway hit an internal error; the request id identifies it in the logs.",
                        status=status if status >= 500 else 500)


def _headers_too_large() -> GatewayError:
    return InvalidRequest(f"Request headers are too large: at most {MAX_HEADERS} headers of {MAX_FIELD} bytes "
                          "each.", code="headers_too_large", status=431)


class Server(web.Server):
    """aiohttp's low-level server (the protocol factory) with `Protocol` and a connection cap."""

    def __init__(self, handler, *, header_timeout: float, max_connections: int, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections

    def __call__(self) -> Protocol:
        return Protocol(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.max_connections:
            # read by the connection's request loop, which starts after this returns
            handler._request_handler = _refuse


async def _refuse(request: web.BaseRequest) -> web.StreamResponse:
    rid = request_id(request)
    err = Unavailable("This gateway worker has too many open connections; retry shortly.",
                      code="too_many_connections")
    resp = web.Response(body=err.to_json(rid), status=503, content_type="application/json",
                        headers={"x-request-id": rid, "Retry-After": "1"})
    resp.force_close()
    return resp


class Runner(web.AppRunner):
    """web.AppRunner serving the app through `Server`, with the server.* connection settings."""

    def __init__(self, app: web.Application, server: ServerConfig, **kwargs: Any):
        super().__init__(app, handler_cancellation=True, access_log=None, keepalive_timeout=server.keepalive_timeout,
                         max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS, **kwargs)
        self.settings = server

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()    # starts the app; its handler and request factory
        return Server(base.request_handler, request_factory=base.request_factory,
                      handler_cancellation=base.handler_cancellation, loop=asyncio.get_running_loop(),
                      header_timeout=self.settings.header_timeout,
                      max_connections=self.settings.max_connections, **base._kwargs)
