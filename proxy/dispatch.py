"""The end of the chain: resolve the route, pick a target, call its provider.

Retries and fallback happen only before the first byte reaches the client: a stream is
peeked (its first event awaited) before it is handed back, so a target that fails before
answering is skipped and the client never sees it — for at most `server.sse_ping_seconds`
after the request came in, after which a silent stream starts and gets keep-alives (_peek). A failure the request itself caused
(400/404/413/422) is returned at once; any other failure is retried on the same target
when retryable (`retry_on`, connection errors, timeouts, broken answers) with backoff,
then the next target (and the request's `models` list) is tried. Targets that keep failing
cool down (proxy/health.py): skipped while a route has another, tried when it has no other.
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from typing import AsyncIterator

import orjson

from proxy import capabilities, native
from proxy.context import RequestContext, RouteMatch, StreamReply
from proxy.errors import GatewayError, InvalidRequest, PermissionDenied, Unavailable, UpstreamTruncated
from proxy.routing import resolve
from proxy.sse import split_events

GATEWAY_FIELDS = ("preset", "cache", "models")
PEEK_EVENTS = 8       # events read ahead at most while waiting for the first content token
MAX_RETRY_WAIT = 2.0   # seconds; an upstream asking for longer is not retried, we fall back instead
MAX_RATE_LIMIT_PAUSE = 3600.0   # seconds; the longest an upstream's 429 Retry-After pauses a target


def resolve_route(ctx: RequestContext) -> RouteMatch:
    """Resolve ctx.model once (memoised on ctx.match) and check the key may use it."""
    if ctx.match is None:
        key = ctx.key
        match = resolve(ctx.model, ctx.state.table, key.allows if key is not None and key.allowed_models else None)
        if key is not None and key.allowed_models and not key.allows(match.public_model):
            raise PermissionDenied(f"This API key may not use the model '{match.public_model}'.",
                                   param="model", code="model_not_allowed",
                                   tip="Ask an administrator to add it to the key's allowed_models.")
        ctx.match = match
    return ctx.match


def upstream_body(ctx: RequestContext, match: RouteMatch, target) -> dict:
    body = dict(ctx.body)
    for name in GATEWAY_FIELDS:
        body.pop(name, None)
    body["model"] = match.upstream_model(target)
    if match.reasoning_effort and "reasoning_effort" not in body:
        body["reasoning_effort"] = match.reasoning_effort
    return body


def ordered_targets(route) -> list:
    targets = list(route.targets)
    if route.strategy == "weighted" and len(targets) > 1:
        # weighted random order without replacement: the rest remain as fallbacks
        keyed = [(random.random() ** (1.0 / max(t.weight, 1e-9)), t) for t in targets]
        targets = [t for _, t in sorted(keyed, key=lambda p: -p[0])]
    return targets


def is_retryable(err: GatewayError, route) -> bool:
    """Worth another try on the same target: the route's `retry_on` statuses, or an error
    whose type says so (connection failures, timeouts, answers malformed or broken before
    anything reached the client: see the proxy.errors ProviderError family)."""
    status = err.upstream_status
    return err.retryable or (status is not None and status in route.retry_on)


def is_client_error(err: GatewayError) -> bool:
    """The request itself is at fault (400/404/413/422): no other target will do better."""
    return 400 <= err.status < 500 and err.status != 429


def candidate_matches(ctx: RequestContext):
    """The requested model, then OpenRouter-style `models: [...]` fallbacks, resolved only
    when reached (each checked against the key's allowed models)."""
    first = resolve_route(ctx)
    extra = ctx.body.get("models") if ctx.body else None
    if extra is not None and (not isinstance(extra, list) or not all(isinstance(m, str) and m for m in extra)):
        raise InvalidRequest("'models' must be a list of model names.", param="models")
    yield first
    if not extra:
        return
    seen = [first.route]
    for i, name in enumerate(extra):
        match = resolve(name, ctx.state.table, ctx.key.allows if ctx.key is not None else None)
        if ctx.key is not None and not ctx.key.allows(match.public_model):
            raise PermissionDenied(f"This API key may not use the model '{match.public_model}'.",
                                   param=f"models[{i}]", code="model_not_allowed")
        if all(r is not match.route for r in seen):
            seen.append(match.route)
            yield match


async def dispatch(ctx: RequestContext):
    """Terminal handler for chat completions, messages and embeddings: the one retry loop.

    Targets cooling down are skipped. When every usable target of a route cools down, the one
    whose cooldown ends first is still tried (Envoy's panic mode), after the healthy targets of
    the request's other models (`models`): a cooldown alone never answers 503."""
    state = ctx.state
    last: GatewayError | None = None
    panic: list[tuple] | None = None     # (match, target, hkey); made only when a route needs it
    for match in candidate_matches(ctx):
        soonest, soonest_left, healthy = None, 0.0, False
        for target in ordered_targets(match.route):
            reason = state.disabled.get(target.provider)
            if reason:
                last = last or Unavailable(f"Model '{match.public_model}' is unavailable: provider "
                                           f"'{target.provider}' is disabled ({reason}).", param="model",
                                           code="provider_not_configured",
                                           tip="Set the variable in the gateway's environment, then reload it.")
                continue
            hkey = (target.provider, match.upstream_model(target))
            left = state.health.remaining(hkey)
            if left:
                if soonest is None or left < soonest_left:
                    soonest, soonest_left = (match, target, hkey), left
                continue
            healthy = True
            reply, err = await _try_target(ctx, match, target, hkey)
            if reply is not None:
                return reply
            last = err
        if soonest is not None and not healthy:
            panic = panic or []
            panic.append(soonest)
    for match, target, hkey in panic or ():
        reply, err = await _try_target(ctx, match, target, hkey)
        if reply is not None:
            return reply
        last = err
    if last is None:
        raise Unavailable(f"Model '{ctx.model}' has no usable target.")
    raise last


async def _try_target(ctx: RequestContext, match: RouteMatch, target, hkey: tuple):
    """Call one target, retrying on it as its route allows: (reply, None) or (None, its error);
    a failure the request caused is raised. Its health (`hkey`: provider, upstream model) hears
    one outcome per request (a success, or a failure once the retries are spent), never one per
    attempt."""
    route, state = match.route, ctx.state
    ctx.match, ctx.target, ctx.provider, ctx.upstream_model = match, target, target.provider, hkey[1]
    provider = state.providers[target.provider]
    call = native.handler(ctx, provider)
    if call is not None:       # the provider speaks the client's format: its request untranslated
        body = native.body_for(ctx, hkey[1])
    else:
        body = upstream_body(ctx, match, target)
        if ctx.endpoint != "embeddings":
            caps = state.capabilities(route, target)
            native.fit(ctx, body, caps)
            capabilities.check(body, caps, match.public_model)
    attempt = 0
    trace = ctx.trace
    while True:
        ctx.attempts += 1
        if trace is not None:       # a child span per attempt; its traceparent goes upstream
            trace.start_attempt(ctx, provider, hkey[1])
        try:
            reply = await _call(ctx, provider, body, call)
        except GatewayError as err:
            if trace is not None:
                trace.attempt_failed(err)
            if is_client_error(err):
                raise
            _attempt_failed(ctx, hkey, err)
            wait = backoff(attempt, err)
            if attempt < route.retries and is_retryable(err, route) and wait <= MAX_RETRY_WAIT:
                attempt += 1
                await asyncio.sleep(wait)
                continue
            _failed(ctx, hkey, route, err)   # next target (a long Retry-After is the client's to honour)
            return None, err
        if state.health.success(hkey):
            _gauge(ctx, hkey, 0)
        if trace is not None:
            trace.attempt_answered(reply)
        return reply, None


def _attempt_failed(ctx: RequestContext, hkey: tuple, err: GatewayError) -> None:
    """Every failed attempt is counted in /metrics; an upstream 429 with Retry-After also pauses
    the target for that long (and no longer)."""
    ctx.gateway.metrics.inc("modelway_upstream_errors_total", (hkey[0], err.code))
    if err.status == 429:
        pause = retry_after(err)
        if pause and ctx.state.health.rate_limited(hkey, min(pause, MAX_RATE_LIMIT_PAUSE)):
            _gauge(ctx, hkey, 1)


def _failed(ctx: RequestContext, hkey: tuple, route, err: GatewayError) -> None:
    """The request's outcome on this target was a failure: it counts toward `cooldown_after`
    (a 429 does not: the upstream is up, only busy, and said for how long)."""
    if err.status != 429 and ctx.state.health.failure(hkey, route.cooldown_after, route.cooldown_seconds):
        _gauge(ctx, hkey, 1)


def _gauge(ctx: RequestContext, hkey: tuple, value: int) -> None:
    # a wildcard route's upstream model is the client's choice: one series per route, not per name
    route = ctx.route
    model = route.name if route is not None and route.wildcard else hkey[1]
    ctx.gateway.metrics.set_gauge("modelway_target_cooldown", {"provider": hkey[0], "model": model},
                                  value, "1 from a target's cooldown (failed requests or an upstream 429) "
                                  "until it answers again.")


async def _call(ctx: RequestContext, provider, body: dict, call=None):
    if call is not None:        # a reply in the client's own format (a copy: a retry sends it again)
        ctx.extra[native.NATIVE_REPLY] = True
        reply = await call(ctx, provider, dict(body))
    else:
        if ctx.extra:
            ctx.extra.pop(native.NATIVE_REPLY, None)    # a fallback after a native attempt
        if ctx.endpoint == "embeddings":
            return await provider.embeddings(ctx, body)
        reply = await provider.chat(ctx, body)     # body is this target's own copy (upstream_body)
    if isinstance(reply, StreamReply):
        reply.events = await _peek(ctx, reply.events.__aiter__())
    return reply


async def _peek(ctx: RequestContext, it) -> AsyncIterator[bytes]:
    """Read a stream up to its first content token (or its end) before anything is sent, so a
    failure there is still a retryable error; hand back those events followed by the rest.

    With keep-alives on (`server.sse_ping_seconds`), the peek waits until that long after the
    request came in, no longer: an upstream still silent then (a model thinking) gets its
    stream handed back unpeeked, so the response starts (headers, then pings) while the peek
    goes on; a failure from then on is an error event in the stream, not a retry."""
    head: list[bytes] = []
    ping = ctx.state.config.server.sse_ping_seconds
    if not ping:
        await _read_head(ctx, it, head)
        return _replay(head, it)
    task = asyncio.create_task(_read_head(ctx, it, head))
    try:
        done, _ = await asyncio.wait((task,), timeout=max(ping - (time.perf_counter() - ctx.started), 0.0))
    except BaseException:    # the client went away (or the drain cut the request): so does the upstream
        task.cancel()
        raise
    if done:
        task.result()        # the peek's failure: a real status, retried or fallen back
        return _replay(head, it)
    # the request's task ends with the response: a peek still running then (a stream never
    # started, its client gone) is cancelled with it
    asyncio.current_task().add_done_callback(lambda _: task.cancel())
    return _started(task, head, it)


async def _read_head(ctx: RequestContext, it, head: list[bytes]) -> None:
    try:
        while len(head) < PEEK_EVENTS:
            event = await it.__anext__()
            head.append(event)
            if carries_content(event):
                break
    except StopAsyncIteration:
        if not head:
            raise UpstreamTruncated(f"provider '{ctx.provider}' sent an empty stream")


def carries_content(item: bytes) -> bool:
    """True when a stream item holds an OpenAI chunk with text, tool calls, reasoning, a finish
    reason or usage (or the end of the stream)."""
    for event in split_events(item):
        if not event.startswith(b"data: {"):
            if event.startswith((b"data: [DONE]", b"event: ")):   # named: an Anthropic stream, peeked by its call
                return True
            continue
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return True
        choices = chunk.get("choices")
        if not choices:
            return True
        choice = choices[0]
        delta = choice.get("delta") or {}
        if (choice.get("finish_reason") or delta.get("content") or delta.get("tool_calls") or choice.get("text")
                or delta.get("reasoning_content") or delta.get("reasoning_details") or delta.get("refusal")):
            return True
    return False


async def _replay(head: list[bytes], rest) -> AsyncIterator[bytes]:
    try:
        for event in head:
            yield event
        async for event in rest:
            yield event
    finally:
        await rest.aclose()


async def _started(peek: asyncio.Task, head: list[bytes], rest) -> AsyncIterator[bytes]:
    """A stream handed back while its peek still runs: the peeked events once it is done."""
    try:
        await peek           # cancelled with this generator's consumer (a client gone mid-wait)
        for event in head:
            yield event
        async for event in rest:
            yield event
    finally:
        peek.cancel()
        await rest.aclose()


def backoff(attempt: int, err: GatewayError) -> float:
    wait = retry_after(err)
    if wait is not None:
        return wait
    return min(0.25 * (2 ** attempt), 4.0) * (0.5 + random.random() / 2)


def retry_after(err: GatewayError) -> float | None:
    """The upstream's Retry-After in seconds (the delta-seconds form), if it sent a usable one."""
    value = err.headers.get("Retry-After") if err.headers else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0.0 <= seconds < math.inf else None

