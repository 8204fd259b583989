"""GET /v1/models and /v1/models/{id}: OpenAI's list shape plus context, pricing, capabilities."""
from __future__ import annotations

from proxy.context import JSONReply, RequestContext
from proxy.errors import ModelNotFound
from proxy.routing import closest_tip, resolve

CREATED = 1735689600  # 2025-01-01: a stable `created` for configured routes


def capabilities(state, route) -> dict[str, bool]:
    """The route's explicit capabilities over its first target's provider defaults."""
    if not route.targets:
        return dict(route.capabilities)
    return state.capabilities(route, route.targets[0])


def model_entry(state, route, model_id: str) -> dict:
    first = route.targets[0] if route.targets else None
    pc = state.config.providers.get(first.provider) if first else None
    disabled = [t.provider for t in route.targets if t.provider in state.disabled]
    return {"id": model_id, "object": "model", "created": CREATED,
            "owned_by": route.owned_by or (pc.name if pc else "modelway"),
            "context_length": route.context_length, "pricing": route.pricing.public(),
            "capabilities": capabilities(state, route),
            "available": len(disabled) < len(route.targets)}


async def list_models_endpoint(ctx: RequestContext) -> JSONReply:
    state = ctx.state
    model_id = ctx.extra.get("model_id")
    if model_id is not None:
        allows = ctx.key.allows if ctx.key is not None else None
        match = resolve(model_id, state.table, allows)
        if allows is not None and not allows(match.public_model):
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model",
                                tip=closest_tip(model_id, state.table, allows))
        return JSONReply(model_entry(state, match.route, model_id))
    data = [model_entry(state, route, name) for name, route in state.table.exact.items()
            if ctx.key is None or ctx.key.allows(name)]
    return JSONReply({"object": "list", "data": data})
