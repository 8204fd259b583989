"""Response cache (SPEC §5): exact match on the canonical request after preset and route
resolution, scoped per API key unless shared. Entries live in the gateway's `CacheBackend`
(proxy/response_cache.py: diskcache on this VM; proxy/state/response_cache.py: Redis, shared by
several nodes); which one is behind it is not this module's business.

Per request: `Cache-Control: no-cache` (skip lookup, still store) / `no-store` (neither), or
a body field `cache: {"no-cache": bool, "no-store": bool, "ttl": seconds}`. A hit answers
`x-cache: HIT` with cost 0 (streamed requests get the answer replayed as SSE); every other
chat or messages answer says `x-cache: MISS` (stored once complete when caching is on and
allowed). Errors, truncated (`length`) and cancelled answers are never stored.
"""
from __future__ import annotations

import hashlib
from typing import AsyncIterator

import orjson
from aiohttp import hdrs
from multidict import istr

from proxy import native_cache
from proxy.chunks import Assembler, replay
from proxy.context import JSONReply, StreamReply, Usage
from proxy.dispatch import resolve_route
from proxy.errors import InvalidRequest
from proxy.pipeline import Middleware
from proxy.sse import split_events

# fields that cannot change the answer's content
IGNORED = frozenset(("stream", "stream_options", "cache", "preset", "model", "user", "metadata", "store",
                     "service_tier", "models"))
FINISHED = ("stop", "tool_calls")   # a complete answer; "length" and the rest are not stored
ROUTE_MEMO = 1024
MEMO_NAME_MAX = 256     # characters of a model name worth memoising (a client may send 100 KB ones)
# /v1/messages requests reach the chain translated to chat completions, and their replies are
# translated back after it: one cache serves both (a hit is replayed in the caller's format)
CACHED_ENDPOINTS = frozenset(("chat", "messages", "responses"))
X_CACHE = istr("x-cache")   # istr: aiohttp takes it without working out its case-insensitive form


class Cache(Middleware):
    name = "cache"

    def __init__(self, gateway, config, shared: bool | None):
        self.gateway = gateway
        self.config = config.cache      # the chain is built per config: its settings hold
        self.shared = config.cache.shared if shared is None else shared
        self.routes: dict[tuple, tuple[bytes, bool]] = {}   # (model name, effort) -> (route_part(), enabled)

    async def handle(self, ctx, call_next):
        body = ctx.body
        if body is None or ctx.endpoint not in CACHED_ENDPOINTS:
            return await call_next(ctx)
        match = resolve_route(ctx)
        name = (match.public_model, match.reasoning_effort)
        memo = self.routes.get(name)
        if memo is None:
            enabled = self.config.enabled if match.route.cache is None else match.route.cache
            memo = (route_part(match), enabled)
            if len(name[0]) <= MEMO_NAME_MAX:      # wildcard routes: names are the client's
                if len(self.routes) >= ROUTE_MEMO:
                    self.routes.clear()
                self.routes[name] = memo
        route, enabled = memo
        if not enabled:
            ctx.response_headers[X_CACHE] = "MISS"
            return await call_next(ctx)
        header = ctx.request.headers.get(hdrs.CACHE_CONTROL)
        if header is None and "cache" not in body:      # the usual request: no cache controls
            no_cache, ttl = False, self.config.ttl
        else:
            control = _controls(header, body)
            if control["no-store"]:
                ctx.cache_status = ctx.response_headers[X_CACHE] = "MISS"
                return await call_next(ctx)
            no_cache, ttl = control["no-cache"], control["ttl"] or self.config.ttl
        store = self.gateway.response_cache
        key = cache_key(ctx, self.shared, route)
        if not no_cache and store.might_have(key):
            hit = await store.get(key)
            if hit is not None:
                reply = self._hit(ctx, orjson.loads(hit))
                if reply is not None:
                    return reply
        ctx.cache_status = ctx.response_headers[X_CACHE] = "MISS"
        reply = await call_next(ctx)
        if native_cache.is_native(ctx):         # a Claude target's answer, stored as it came
            return self._store_native(ctx, reply, key, ttl)
        if type(reply) is JSONReply:
            if reply.status == 200 and type(reply.body) is dict and _complete(reply.body):
                # serialised here once: the same bytes answer the client and go into the cache
                reply.body = orjson.dumps(reply.body)
                store.put_later(key, _stored(ctx, orjson.Fragment(reply.body)), ttl)
            return reply
        reply.events = self._tee(ctx, reply.events, key, ttl)
        return reply

    def _store_native(self, ctx, reply, key: str, ttl: float):
        store = self.gateway.response_cache
        if type(reply) is JSONReply:
            entry = native_cache.stored_json(ctx, reply)
            if entry is not None:
                store.put_later(key, entry, ttl)
        else:
            reply.events = native_cache.tee(ctx, reply.events, lambda entry: store.put_later(key, entry, ttl))
        return reply

    def _hit(self, ctx, stored: dict):
        if "native" in stored:
            reply = native_cache.hit(ctx, stored)
            if reply is None:            # stored plain, asked streamed (or the reverse): a miss
                return None
            ctx.cache_hit = True
            ctx.cache_status = ctx.response_headers[X_CACHE] = "HIT"
            ctx.finalize_cost()
            return reply
        ctx.cache_hit = True
        ctx.cache_status = ctx.response_headers[X_CACHE] = "HIT"
        completion = stored["completion"]
        ctx.provider, ctx.upstream_model = stored.get("provider"), stored.get("upstream_model")
        ctx.usage = Usage.from_openai(completion.get("usage"))
        usage = ctx.usage.to_openai(ctx.finalize_cost())
        completion["usage"] = usage
        if ctx.stream:
            return StreamReply(_aiter(replay(completion, ctx.include_usage, usage)))
        return JSONReply(completion)

    async def _tee(self, ctx, events, key: str, ttl: float) -> AsyncIterator[bytes]:
        assembler = Assembler()
        done = False
        try:
            async for item in events:
                for event in split_events(item):
                    if event.startswith(b"data: {"):
                        assembler.feed(orjson.loads(event[6:]))
                    elif event.startswith(b"data: [DONE]"):
                        done = True
                yield item
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        if done and assembler.base is not None:
            completion = assembler.result()
            if ctx.usage.known:
                completion["usage"] = ctx.usage.to_openai()
            if _complete(completion):
                self.gateway.response_cache.put_later(key, _stored(ctx, completion), ttl)


async def _aiter(items) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def _complete(completion: dict) -> bool:
    choices = completion.get("choices")
    if not choices:
        return False
    for choice in choices:
        if choice.get("finish_reason") not in FINISHED:
            return False
    return True


def _stored(ctx, completion: dict | orjson.Fragment) -> bytes:
    return orjson.dumps({"completion": completion, "provider": ctx.provider, "upstream_model": ctx.upstream_model})


def _controls(header: str | None, body: dict) -> dict:
    """The request's cache controls: its Cache-Control header and the body's `cache` field,
    which is removed here (the upstream never sees it)."""
    out = {"no-cache": False, "no-store": False, "ttl": None}
    header = (header or "").lower()
    if "no-store" in header:
        out["no-store"] = True
    if "no-cache" in header:
        out["no-cache"] = True
    field = body.pop("cache", None)
    if field is None:
        return out
    if not isinstance(field, dict):
        raise InvalidRequest("'cache' must be an object like {\"no-cache\": true, \"ttl\": 60}.", param="cache")
    for name in ("no-cache", "no-store"):
        value = field.get(name, field.get(name.replace("-", "_")))
        if value is not None:
            if not isinstance(value, bool):
                raise InvalidRequest(f"'cache.{name}' must be a boolean.", param=f"cache.{name}")
            out[name] = out[name] or value
    ttl = field.get("ttl")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise InvalidRequest("'cache.ttl' must be a positive number of seconds.", param="cache.ttl")
        out["ttl"] = float(ttl)
    return out


def route_part(match) -> bytes:
    """The resolved route of the canonical request, serialised: route, targets, effort."""
    route = match.route
    return orjson.dumps([route.name, [(t.provider, match.upstream_model(t)) for t in route.targets],
                         match.reasoning_effort])


def cache_key(ctx, shared: bool, route: bytes) -> str:
    """A 128-bit BLAKE2b digest (32 hex characters: a short key keeps diskcache's index small)
    of the canonical request: resolved route and targets (`route_part`), then scope and every
    output-affecting field (JSON key order and `stream` do not matter). Both parts are JSON
    texts, which a JSON reader can take apart again: no two requests share the bytes."""
    scope = None if shared or ctx.key is None else ctx.key.id
    body = {k: v for k, v in ctx.body.items() if k not in IGNORED}
    native = native_cache.key_part(ctx)       # a request also sent as is: all of it counts
    parts = [scope, body] if native is None else [scope, body, native]
    return hashlib.blake2b(route + orjson.dumps(parts, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).hexdigest()


def cache(gateway, config, *, shared: bool | None = None) -> Cache:
    return Cache(gateway, config, shared)
