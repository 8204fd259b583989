"""The middleware contract and the chain built from the `middlewares:` list.

A middleware factory `factory(gateway, config, **options)` takes the Gateway, the Config being
built and keyword-only options (checked at build time) and returns a `Middleware`, which
overrides any of:

- `before(ctx)`: a synchronous check or rewrite before the rest of the chain, refusing the
  request by raising an APIError (auth, rate limits, presets). Consecutive hooks run in one
  loop, without a coroutine layer each. Leading hooks of middlewares with `needs_body = False`
  (auth) run before the request body is read. A hook returns None; when it needs I/O it may
  instead return an awaitable (its slow path: auth looking up a key this worker does not know
  yet), which the caller awaits before the next hook. The usual path stays a plain call.
- `handle(ctx, call_next)`: wraps the rest of the chain; may short-circuit it (cache hits) or
  wrap a StreamReply's `events` iterator (cache). It runs after the middleware's own `before`.
- `finish(ctx)`: observes the completed request exactly once — after the last byte, an error
  or a client disconnect — wherever the middleware sits in the list, so observers (access log,
  ledger, metrics) see every request, including those an earlier middleware refused.
"""
from __future__ import annotations

import importlib
from functools import partial
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from proxy.context import Reply, RequestContext

Handler = Callable[["RequestContext"], Awaitable["Reply"]]

BUILTINS = {
    "access_log": "middlewares.access_log:access_log",
    "auth": "middlewares.auth:auth",
    "ratelimit": "middlewares.ratelimit:ratelimit",
    "presets": "middlewares.presets:presets",
    "cache": "middlewares.cache:cache",
    "accounting": "middlewares.accounting:accounting",
}


class Middleware:
    name = "middleware"
    needs_body = True   # False: its `before` may run before the request body is read (auth)

    def before(self, ctx: "RequestContext") -> "Awaitable[None] | None":
        """Check or rewrite the request before the rest of the chain; raise to refuse it. Return
        None, or an awaitable for a slow path that needs I/O (the caller awaits it)."""

    async def handle(self, ctx: "RequestContext", call_next: Handler) -> "Reply":
        return await call_next(ctx)

    def finish(self, ctx: "RequestContext") -> None:
        """Called once when the request is complete (success, error or disconnect)."""

    async def close(self) -> None:
        """Release what the middleware holds (tasks, files) when its chain is retired."""


class MiddlewareBuildError(Exception):
    pass


def load_factory(name: str):
    target = BUILTINS.get(name, name)
    module, _, attr = target.partition(":")
    if not attr:
        raise MiddlewareBuildError(f"middleware {name!r}: expected 'package.module:factory'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise MiddlewareBuildError(f"middleware {name!r}: cannot import {target}: {exc}") from exc


def build_middlewares(config, gateway) -> list[Middleware]:
    out = []
    for spec in config.middlewares:
        factory = load_factory(spec.name)
        try:
            mw = factory(gateway, config, **dict(spec.options))
        except TypeError as exc:
            raise MiddlewareBuildError(f"middleware {spec.name!r}: bad options: {exc}") from exc
        out.append(mw)
    return out


class Chain:
    """The frozen chain: `wrap` gives the hooks and wrappers around an endpoint; `finish` runs
    the observers."""

    def __init__(self, middlewares: list[Middleware]):
        self.middlewares = tuple(middlewares)
        self.finishers = tuple(m.finish for m in middlewares if type(m).finish is not Middleware.finish)

    def wrap(self, endpoint: Handler) -> tuple[tuple, tuple, Handler]:
        """(the leading `before` hooks that need no body, the other `before` hooks ahead of
        every wrapper, the handler for the rest): the caller runs the first before it reads
        the body (a bad key is refused as such, whatever the body), then the others, then
        awaits the handler, so leading hooks cost no coroutine layer at all."""
        handler, befores, owners = endpoint, [], []
        for mw in reversed(self.middlewares):
            if type(mw).handle is not Middleware.handle:
                handler = partial(mw.handle, call_next=_with_befores(befores, handler))
                befores, owners = [], []
            if type(mw).before is not Middleware.before:
                befores.insert(0, mw.before)
                owners.insert(0, mw)
        early = 0
        while early < len(owners) and not owners[early].needs_body:
            early += 1
        return tuple(befores[:early]), tuple(befores[early:]), handler

    async def close(self) -> None:
        for mw in self.middlewares:
            await mw.close()

    def finish(self, ctx: "RequestContext") -> None:
        for fn in self.finishers:
            try:
                fn(ctx)
            except Exception:  # an observer must never break the response
                import structlog
                structlog.get_logger("modelway").exception("middleware_finish_failed")


def _with_befores(befores: list, handler: Handler) -> Handler:
    if not befores:
        return handler
    hooks = tuple(befores)

    async def run(ctx: "RequestContext") -> "Reply":
        for hook in hooks:
            slow = hook(ctx)
            if slow is not None:
                await slow
        return await handler(ctx)
    return run
