"""The HTTP half of every remote provider: one pooled ClientSession, the POST, the mapping of
statuses and transport failures to the typed upstream errors (proxy.errors UpstreamError
family), bounded reads of error bodies and replies, the SSE reader with the idle rule, and the
redaction of the provider's secrets. A provider module subclasses HTTPProvider and adds only
its translation (`auth_headers`, `status_error` for its error shape, `chat`).

Timeouts (provider `timeouts`): `connect` for the TCP/TLS connection, `first_byte` until the
response status, `idle` between two stream events that carry data (comments and keep-alives do
not count) and between reads of a plain body, `total` for the whole exchange.
Limits: an error body is read up to MAX_ERROR_BODY; a non-streamed reply up to the provider's
`max_response_mb` after decompression, read into one buffer that is freed with the reply.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import aiohttp
import orjson

from proxy import logs
from proxy.errors import (GatewayError, ProviderError, Redactor, UpstreamBadResponse, UpstreamTimeout,
                          UpstreamTooLarge, UpstreamTruncated, UpstreamUnreachable, from_upstream, sanitise)
from proxy.providers.base import Provider
from proxy.sse import SSEEvent, data_batches

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

MAX_ERROR_BODY = 64 * 1024


class HTTPProvider(Provider):
    #: set by the Gateway when traces are on (proxy.tracing Tracing.headers): adds the current
    #: attempt span's traceparent to the upstream request's headers
    trace_headers: Callable[[dict[str, str] | None], dict[str, str]] | None = None

    def __init__(self, config: "ProviderConfig"):
        super().__init__(config)
        self.session: aiohttp.ClientSession | None = None
        headers = {**config.headers, **self.auth_headers()}
        self.headers: dict[str, str] = headers
        #: every secret this provider sends upstream (api_key, every configured header value), by
        #: value; the provider's own constant headers (anthropic-version) are no secret
        self.redact = Redactor([config.api_key, *config.headers.values()])
        logs.redact_in_logs(self.redact.values)

    def auth_headers(self) -> dict[str, str]:
        """The credential headers sent with every request (from `config.api_key`)."""
        return {}

    async def start(self) -> None:
        if self.session is None or self.session.closed:
            t, limit = self.config.timeouts, self.config.max_connections
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300),
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect),
                auto_decompress=True, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # --- request ---------------------------------------------------------------------------

    async def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """Send the request; return once the upstream answered a success status. Every failure
        is raised as a GatewayError (the error status mapped by `status_error`)."""
        session = self.session
        if session is None or session.closed:
            raise ProviderError(f"provider {self.name!r} is not started", code="provider_not_started")
        first_byte = self.config.timeouts.first_byte
        if self.trace_headers is not None:
            headers = self.trace_headers(headers)
        try:
            async with asyncio.timeout(first_byte):
                resp = await session.post(url, data=orjson.dumps(body), headers=headers)
                if resp.status >= 400:
                    raise await self._error(resp)
        except GatewayError:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.name!r} did not answer within {first_byte:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"could not reach provider {self.name!r}: {type(exc).__name__}") from exc
        return resp

    async def _error(self, resp: aiohttp.ClientResponse) -> GatewayError:
        try:
            raw = await self._read(resp, MAX_ERROR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            resp.close()
        return self.status_error(resp.status, bytes(raw[:MAX_ERROR_BODY]), resp.headers.get("Retry-After"))

    def status_error(self, status: int, raw: bytes, retry_after: str | None) -> GatewayError:
        """An upstream error status and its body -> the gateway's error (override for the
        provider's error shape; pass the text through `self.redact`)."""
        return from_upstream(status, error_message(raw), provider=self.name, retry_after=retry_after,
                             redact=self.redact)

    def message(self, text: str) -> str:
        """Upstream text made fit for a client, a log line or the ledger."""
        return sanitise(text, redact=self.redact)

    # --- plain replies ---------------------------------------------------------------------

    async def read_json(self, resp: aiohttp.ClientResponse) -> Any:
        """The reply body parsed, at most `max_response_mb` decompressed (UpstreamTooLarge
        beyond), the connection released either way."""
        raw = await self.read_body(resp)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        raw = None      # let go of the body before raising (see read_body)
        raise UpstreamBadResponse(f"provider {self.name!r} sent malformed JSON")

    async def read_body(self, resp: aiohttp.ClientResponse) -> bytearray | bytes:
        """The reply body's bytes, at most `max_response_mb` decompressed (UpstreamTooLarge
        beyond), the connection released either way."""
        limit = self.config.max_response_bytes
        try:
            raw = await self._read(resp, limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamTruncated(f"provider {self.name!r} broke off its response") from exc
        finally:
            resp.close()
        if len(raw) <= limit:
            return raw
        # the error's traceback keeps this frame, and so its locals, until the cycle collector
        # runs: let go of the body first (16 concurrent bombs otherwise hold 16 x the limit)
        raw = None
        raise UpstreamTooLarge(f"provider {self.name!r} sent a response over the size limit "
                               f"({self.config.max_response_mb:g} MB)")

    async def _read(self, resp: aiohttp.ClientResponse, limit: int) -> bytearray | bytes:
        """The whole body, stopping once it is over `limit` bytes (so a compressed bomb is
        refused after `limit` decompressed bytes); `timeouts.idle` bounds each wait. One
        growing buffer (each piece freed as soon as it is copied), not a list of pieces."""
        content = resp.content
        if content.is_eof():                # all of it already arrived: no timers, no waits
            return content.read_nowait(limit + 1)
        idle = self.config.timeouts.idle
        body = bytearray()
        while len(body) <= limit:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
            if not chunk:
                break
            body += chunk
        return body

    # --- streams ---------------------------------------------------------------------------

    async def events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[list[SSEEvent]]:
        """The stream's data events, one list per upstream read; a stall past `timeouts.idle`
        without a data event, a reset or an oversized event is an UpstreamTruncated. A JSON
        body where a stream was asked for is the upstream's error (`upstream_error_body`)."""
        if resp.content_type == "application/json":
            body = await self.read_json(resp)
            raise UpstreamBadResponse(f"provider {self.name!r} answered 200 with an error: "
                                      f"{self.message(error_message(body))}", code="upstream_error_body")
        try:
            async for batch in data_batches(resp.content.readany, self.config.timeouts.idle):
                yield batch
        except TimeoutError as exc:
            raise UpstreamTruncated(f"provider {self.name!r} stalled") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamTruncated(f"provider {self.name!r} broke off the stream") from exc


def error_message(raw: bytes | Any) -> str:
    """The human message of an upstream error body, whatever its shape (untrimmed: trim only
    after redaction)."""
    try:
        data = orjson.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    except orjson.JSONDecodeError:
        return bytes(raw[:MAX_ERROR_BODY]).decode("utf-8", "replace").strip() or "no message"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("type") or err)
        return str(err)
    return str(data)
