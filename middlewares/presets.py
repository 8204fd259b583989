"""Presets (SPEC §4): named bundles of model, system prompt and params from routes.yaml.

Referenced as `presets/<name>`, `presets/<name>@<model>`, `@preset/<name>[@<model>]` or a
`preset: "<name>"` field. The request's own fields win (shallow merge); the preset's system
prompt goes first.
"""
from __future__ import annotations

import copy

from proxy.errors import InvalidRequest, NotFound, PermissionDenied
from proxy.pipeline import Middleware

PREFIXES = ("presets/", "@preset/")


def parse_reference(model: str | None, field: str | None) -> tuple[str, str | None] | None:
    """(preset name, model override) for a request, or None when it names no preset."""
    if isinstance(model, str):
        for prefix in PREFIXES:
            if model.startswith(prefix):
                name, _, override = model[len(prefix):].partition("@")
                return name, override or None
    if isinstance(field, str) and field:
        return field, model or None
    return None


class Presets(Middleware):
    name = "presets"

    def before(self, ctx) -> None:
        body = ctx.body
        if body is not None and ctx.endpoint in ("chat", "messages", "responses", "completions"):
            model = body.get("model")
            if "preset" not in body and not (isinstance(model, str) and model.startswith(PREFIXES)):
                return      # the usual request: no preset
            ref = parse_reference(model, body.get("preset"))
            if ref is not None:
                apply(ctx, *ref)
            elif "preset" in body:
                raise InvalidRequest("'preset' must be a non-empty string naming a preset.", param="preset")


def apply(ctx, name: str, override: str | None) -> None:
    presets = ctx.state.config.presets
    preset = presets.get(name)
    key = ctx.key
    if preset is None:
        known = ", ".join(sorted(n for n, p in presets.items() if _may_use(key, p))) or "none for this key"
        raise NotFound(f"Preset '{name}' does not exist.", param="model", code="preset_not_found",
                       tip=f"Known presets: {known}.")
    if not _may_use(key, preset):
        raise PermissionDenied(f"This API key may not use preset '{name}'.", param="model",
                               code="preset_not_allowed", tip="Ask an administrator to add the key to the preset's keys.")
    if override:
        model = override
    elif preset.model == "any":
        raise InvalidRequest(f"Preset '{name}' works with any model: name one as 'presets/{name}@<model>'.",
                             param="model", code="preset_model_required")
    else:
        model = preset.model
    body = ctx.body
    for field, value in preset.params.items():
        if field not in body:
            body[field] = copy.deepcopy(value)
    if preset.system:
        body["messages"] = [{"role": "system", "content": preset.system}, *body["messages"]]
    body.pop("preset", None)
    body["model"] = model
    ctx.model = model
    ctx.preset = name
    ctx.stream = body.get("stream") is True
    opts = body.get("stream_options")
    ctx.include_usage = ctx.stream and isinstance(opts, dict) and opts.get("include_usage") is True


def presets(gateway, config) -> Presets:
    return Presets()


def _may_use(key, preset) -> bool:
    return preset.keys is None or key is None or key.management or key.label in preset.keys or key.id in preset.keys
