"""An OTLP/HTTP trace receiver on 127.0.0.1: `POST /v1/traces` with an ExportTraceServiceRequest
(protobuf, plain or gzip), decoded with the official `opentelemetry-proto` messages into plain
dicts, one per span, kept in `spans` in arrival order."""
from __future__ import annotations

import asyncio
import gzip
import time

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.fakes import serve_loopback

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_INTERNAL: "internal"}
STATUSES = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


class OTLPReceiver:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.exports = 0
        self.content_types: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> "OTLPReceiver":
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        self._runner, self.url = await serve_loopback(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def traces(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.content_types.add(request.content_type)
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(raw)
        self.exports += 1
        for rs in msg.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "kind": KINDS.get(s.kind, str(s.kind)),
                        "attributes": attributes(s.attributes), "status": STATUSES[s.status.code],
                        "status_message": s.status.message, "scope": ss.scope.name, "resource": resource,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def wait_spans(self, predicate, timeout: float = 10.0) -> list[dict]:
        """The spans once `predicate(spans)` holds (polled with a deadline)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.spans):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for spans; got {[s['name'] for s in self.spans]}")
            await asyncio.sleep(0.02)
        return self.spans
