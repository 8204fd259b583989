"""OpenTelemetry traces with the GenAI semantic conventions, configured by the standard `OTEL_*`
environment variables; nothing at all when they do not ask for traces.

On when `OTEL_TRACES_EXPORTER=otlp`, or when it is unset and `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (`OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep it off). Then each worker builds, at start, the official SDK's
TracerProvider (resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, sampler from
`OTEL_TRACES_SAMPLER[_ARG]`), an OTLP/HTTP protobuf exporter (endpoint, headers, timeout,
compression, certificates from `OTEL_EXPORTER_OTLP_*`) and a BatchSpanProcessor: spans wait in
a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048; dropped beyond) and leave in batches from the
processor's own thread, never from the event loop. Off, `from_env` returns None and the hooks
in handlers.run, dispatch and HTTPProvider.post are one `is not None` test each; the SDK is not
even imported.

Spans: one SERVER span per API request (continuing the client's W3C `traceparent`), one CLIENT
child per upstream attempt (every retry and fallback its own span, error.type on the failed
ones). The attempt's `traceparent` goes upstream. Attributes are GenAI conventions
(`gen_ai.*`, `server.address`, `error.type`) plus `modelway.*` (cost, cache, key label,
request id). No secret (no header, no key, no base URL's userinfo) and no prompt text is
recorded unless `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`, which adds the
request's messages as `gen_ai.input.messages` to the request span.
"""
from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping
from urllib.parse import urlsplit

import orjson

from proxy.context import JSONReply, StreamReply

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.context import RequestContext
    from proxy.errors import GatewayError

#: gen_ai.operation.name per endpoint; other endpoints (models, account, ...) get plain HTTP spans
OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion",
              "embeddings": "embeddings", "count_tokens": "count_tokens"}
#: gen_ai.provider.name per provider type (an OpenAI-compatible upstream speaks OpenAI's API)
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "mock": "modelway.mock"}
SUPPORTED_PROTOCOLS = ("http/protobuf",)
# a finish reason or the model in an answer's JSON text (a stream event, a raw body): inside a
# JSON string every quote is escaped, so these match only keys (cheaper than parsing again)
_FINISH = re.compile(rb'"(?:finish_reason|stop_reason)":\s*"([A-Za-z0-9_.\-]{1,64})"')
_MODEL = re.compile(rb'"model":\s*"([^"\\]{1,256})"')


class TracingError(Exception):
    """The OTEL_* environment asks for something this gateway cannot do (e.g. gRPC export)."""


def wanted(environ: Mapping[str, str]) -> bool:
    """Does the environment ask for traces? Raises TracingError for an exporter we lack."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "otlp"):
        on = exporter == "otlp" or bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    elif exporter == "none":
        return False
    else:
        raise TracingError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported (use 'otlp' or 'none')")
    if on:
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "http/protobuf").strip().lower()
        if protocol not in SUPPORTED_PROTOCOLS:
            raise TracingError(f"OTLP protocol {protocol!r} is not supported (use 'http/protobuf')")
    return on


def from_env(environ: Mapping[str, str] = os.environ) -> "Tracing | None":
    """The worker's Tracing when the environment asks for traces, else None (nothing imported,
    nothing started). Call it in the worker process (after any fork): it starts a thread."""
    if not wanted(environ):
        return None
    # imported only here: an untraced worker never loads the SDK, the exporter or protobuf
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    provider = TracerProvider()          # resource and sampler from OTEL_* (the SDK reads them)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    capture = environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().lower() == "true"
    return Tracing(provider, capture_content=capture)


class Tracing:
    """One per worker: the tracer, the W3C propagator, and what it costs to shut down."""

    def __init__(self, provider, *, capture_content: bool = False):
        # imported with the SDK (see from_env): untraced workers never get here
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        self.provider = provider
        self.tracer = provider.get_tracer("modelway")
        self.capture_content = capture_content
        self.propagator = TraceContextTextMapPropagator()   # W3C only: no client baggage goes upstream
        self.otel_context, self.otel_trace = context, trace
        self.server_kind, self.client_kind = SpanKind.SERVER, SpanKind.CLIENT
        self.status, self.error = Status, StatusCode.ERROR
        self._servers: dict[str, tuple[str | None, int | None]] = {}   # base_url -> (host, port)

    def start(self, request: "web.Request", ctx: "RequestContext") -> "RequestTrace":
        """The request's SERVER span, a child of the client's traceparent when it sent one."""
        parent = self.propagator.extract(request.headers) if "traceparent" in request.headers else None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path    # /v1/models/{model_id}: few names
        span = self.tracer.start_span(f"{request.method} {route}", context=parent, kind=self.server_kind,
                                      attributes={"http.request.method": request.method, "url.path": request.path,
                                                  "modelway.request_id": ctx.request_id})
        return RequestTrace(self, span)

    def headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """`headers` plus the current attempt's `traceparent` (HTTPProvider.post calls this)."""
        carrier = dict(headers) if headers else {}
        self.propagator.inject(carrier)
        return carrier

    def server(self, base_url: str) -> tuple[str | None, int | None]:
        found = self._servers.get(base_url)
        if found is None:
            parts = urlsplit(base_url)       # .hostname: never the userinfo
            try:
                port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
            except ValueError:
                port = None
            found = self._servers[base_url] = (parts.hostname, port)
        return found

    async def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread (off the event loop: it blocks)."""
        await asyncio.to_thread(self.provider.shutdown)


class RequestTrace:
    """The spans of one request: its SERVER span and the attempt being made or answered."""
    __slots__ = ("tracing", "span", "attempt", "token", "response_model", "finish_reasons")

    def __init__(self, tracing: Tracing, span):
        self.tracing, self.span = tracing, span
        self.attempt = None          # the open attempt span (the answering one once answered)
        self.token = None            # the attached context while an attempt is being made
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []

    # --- attempts (proxy.dispatch) ----------------------------------------------------------

    def start_attempt(self, ctx: "RequestContext", provider, upstream_model: str) -> None:
        """A CLIENT span for one upstream call; until it ends, it is the current span, so the
        provider's POST carries its traceparent."""
        t = self.tracing
        self._close_attempt()
        op = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        attrs: dict[str, Any] = {"gen_ai.operation.name": op,
                                 "gen_ai.provider.name": PROVIDER_NAMES.get(provider.type, provider.type),
                                 "gen_ai.request.model": upstream_model, "gen_ai.request.stream": ctx.stream,
                                 "modelway.provider": provider.name, "modelway.attempt": ctx.attempts}
        base_url = getattr(provider.config, "base_url", None)
        if base_url:
            host, port = t.server(base_url)
            if host:
                attrs["server.address"] = host
            if port:
                attrs["server.port"] = port
        parent = t.otel_trace.set_span_in_context(self.span)
        span = self.attempt = t.tracer.start_span(f"{op} {upstream_model}", context=parent, kind=t.client_kind,
                                                  attributes=attrs)
        self.token = t.otel_context.attach(t.otel_trace.set_span_in_context(span, parent))

    def attempt_failed(self, err: "GatewayError") -> None:
        span = self.attempt
        if span is None:
            return
        self._detach()
        _set_error(self.tracing, span, err.code or err.type, err.upstream_status, type(err).__name__)
        span.end()
        self.attempt = None

    def attempt_answered(self, reply):
        """The attempt's answer came: read its model and finish reasons (a stream as it goes
        by); its span ends with the request, when the usage is known. Returns the reply."""
        self._detach()
        if isinstance(reply, StreamReply):
            reply.events = self._watch(reply.events)
        elif isinstance(reply, JSONReply):
            self._read_body(reply.body)
        return reply

    async def _watch(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for item in events:
                self._scan(item)
                yield item
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _scan(self, item: bytes) -> None:
        if self.response_model is None:
            m = _MODEL.search(item)
            if m:
                self.response_model = m.group(1).decode("utf-8", "replace")
        if b"_reason" in item:
            self.finish_reasons += [r.decode() for r in _FINISH.findall(item)]

    def _read_body(self, body) -> None:
        if isinstance(body, (bytes, bytearray)):
            self._scan(bytes(body))
            return
        if not isinstance(body, dict):
            return
        model = body.get("model")
        if isinstance(model, str):
            self.response_model = model
        for choice in body.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                self.finish_reasons.append(choice["finish_reason"])
        if isinstance(body.get("stop_reason"), str):
            self.finish_reasons.append(body["stop_reason"])

    def _detach(self) -> None:
        if self.token is not None:
            self.tracing.otel_context.detach(self.token)
            self.token = None

    def _close_attempt(self, ctx: "RequestContext | None" = None) -> None:
        """End an attempt still open: the answering one (with the usage), or one cut short
        (the client went away, the drain deadline, an unexpected error)."""
        span = self.attempt
        if span is None:
            return
        self._detach()
        self.attempt = None
        if ctx is not None and span.is_recording():
            attrs = self._answer(ctx)
            if ctx.error_type and (ctx.status >= 500 or ctx.partial):
                attrs["error.type"] = ctx.error_code or ctx.error_type
                span.set_status(self.tracing.status(self.tracing.error))
            span.set_attributes(attrs)        # one call: the SDK checks and locks per call
        span.end()

    def _answer(self, ctx: "RequestContext") -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.response_model:
            attrs["gen_ai.response.model"] = self.response_model
        if self.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = tuple(self.finish_reasons)
        usage = ctx.usage
        if usage.known:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.cached_tokens:
                attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
            if usage.cache_write_tokens:
                attrs["gen_ai.usage.cache_write.input_tokens"] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        return attrs

    # --- the request (proxy.handlers.run) ---------------------------------------------------

    def end(self, ctx: "RequestContext") -> None:
        self._close_attempt(ctx)
        span = self.span
        if not span.is_recording():      # sampled out: nothing to describe
            span.end()
            return
        attrs = self._answer(ctx)
        op = OPERATIONS.get(ctx.endpoint)
        model = ctx.requested_model or ctx.model
        if op is not None:
            span.update_name(f"{op} {model}" if model else op)
            attrs["gen_ai.operation.name"] = op
            if model:
                attrs["gen_ai.request.model"] = model
            attrs["gen_ai.request.stream"] = ctx.stream
        if ctx.target is not None and ctx.provider is not None:
            provider = ctx.state.providers.get(ctx.provider) if ctx.state else None
            ptype = provider.type if provider is not None else ""
            attrs["gen_ai.provider.name"] = PROVIDER_NAMES.get(ptype, ptype)
            attrs["modelway.provider"] = ctx.provider
        attrs["http.response.status_code"] = ctx.status
        attrs["modelway.cost_usd"] = ctx.cost
        attrs["modelway.cache_hit"] = ctx.cache_hit
        attrs["modelway.attempts"] = ctx.attempts
        if ctx.cache_status:
            attrs["modelway.cache_status"] = ctx.cache_status
        if ctx.key is not None:
            attrs["modelway.key_label"] = ctx.key.label
        if ctx.preset:
            attrs["modelway.preset"] = ctx.preset
        if ctx.stream and ctx.ttft_ms is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = ctx.ttft_ms / 1000.0
        if self.tracing.capture_content and ctx.body and isinstance(ctx.body.get("messages"), list):
            attrs["gen_ai.input.messages"] = orjson.dumps(ctx.body["messages"]).decode()
        if ctx.error_type or ctx.status >= 400:
            attrs["error.type"] = ctx.error_code or ctx.error_type or str(ctx.status)
            if ctx.status >= 500:
                span.set_status(self.tracing.status(self.tracing.error))
        span.set_attributes(attrs)
        span.end()


def _set_error(t: Tracing, span, error_type: str, upstream_status: int | None, description: str | None) -> None:
    attrs: dict[str, Any] = {"error.type": error_type}
    if upstream_status is not None:
        attrs["http.response.status_code"] = upstream_status
    span.set_attributes(attrs)
    span.set_status(t.status(t.error, description))
