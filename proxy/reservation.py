"""What a request may cost at most, reserved against its key's balance and daily limit before
it is sent (see middlewares.ratelimit and proxy.store.limits).

    prompt bytes x the highest prompt price (input, cached input, cache write)
  + output tokens x n x the output price

Prompt bytes: the request body's size (plus a preset's system prompt); a token is at least one
byte of the text it stands for, so the body's size bounds the prompt's tokens. Images given by
https URL are the exception: their tokens are not bounded by the bytes of the URL.
Output tokens: the request's `max_completion_tokens` / `max_tokens` (a preset's, if the request
has none), else the route's `max_tokens`, else a Claude model's output limit, else the route's
`context_length`, else DEFAULT_OUTPUT_CAP. Embeddings have no output. With `models: [...]`
fallbacks the dearest candidate counts. A model without pricing costs 0; a model that does
not resolve reserves 0 (the request fails before any upstream is called).
"""
from __future__ import annotations

import math

import orjson

from proxy.anthropic.request import model_info
from proxy.errors import GatewayError
from proxy.routing import resolve

DEFAULT_OUTPUT_CAP = 131_072      # tokens, for a route that names no output limit at all
PRESET_PREFIXES = ("presets/", "@preset/")


def _output_cap(match, providers) -> int:
    route = match.route
    if route.max_tokens_default:
        return route.max_tokens_default
    caps = []
    for target in route.targets:      # the largest default output of any target
        provider = providers.get(target.provider)
        if provider is not None and provider.type == "anthropic":
            caps.append(model_info(match.upstream_model(target)).max_output)
        else:
            caps.append(route.context_length or DEFAULT_OUTPUT_CAP)
    return max(caps, default=DEFAULT_OUTPUT_CAP)


def _requested_output(body: dict, params) -> int | None:
    for source in (body, params):
        for name in ("max_completion_tokens", "max_tokens"):
            value = source.get(name)
            if type(value) is int and value > 0:
                return value
    return None


def reservation_micro(ctx) -> int:
    """The request's cost upper bound in micro-USD (rounded up)."""
    body = ctx.body or {}
    config = ctx.state.config
    model, params, extra_bytes = body.get("model"), {}, 0
    preset_name = body.get("preset") if isinstance(body.get("preset"), str) else None
    if isinstance(model, str) and model.startswith(PRESET_PREFIXES):
        rest = model.split("/", 1)[1]
        preset_name, _, model = rest.partition("@")
    preset = config.presets.get(preset_name) if preset_name else None
    if preset is not None:
        params = preset.params
        extra_bytes = len(preset.system.encode()) if preset.system else 0
        if not model:
            model = None if preset.model == "any" else preset.model
    fallbacks = body.get("models")
    names = [model, *fallbacks] if isinstance(fallbacks, list) else [model]
    length = ctx.request.content_length
    prompt = (length if length is not None else len(orjson.dumps(body))) + extra_bytes
    asked = _requested_output(body, params) if ctx.endpoint != "embeddings" else 0
    n = body.get("n") if type(body.get("n")) is int and body.get("n") > 1 else 1
    worst = 0.0
    for name in names:
        if not isinstance(name, str):
            continue
        try:
            match = resolve(name, ctx.state.table)
        except GatewayError:
            continue
        p = match.route.pricing
        out = asked if asked is not None else _output_cap(match, config.providers)
        worst = max(worst, prompt * max(p.input, p.cached_input_price, p.cache_write_price) + out * n * p.output)
    return math.ceil(worst)
