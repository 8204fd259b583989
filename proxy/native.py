"""Each target gets its own form of the request: untranslated where its provider speaks the client's
format, translated through Chat Completions otherwise.

/v1/messages, /v1/messages/count_tokens, /v1/completions and /v1/responses reach the middleware
chain translated to Chat Completions (so presets, the cache and accounting see one format), and
keep the request as the client sent it under ctx.extra[NATIVE_BODY]. At the end of the chain
(proxy.dispatch), per target, `handler(ctx, provider)` names the function that sends the native
request to a provider that speaks it: a Claude target (`type: anthropic`) for the two Anthropic
endpoints, an OpenAI-compatible one for legacy completions and, when its options say
`responses: native` (OPT_IN), for the Responses API. Its reply is already in the client's format
(ctx.extra[NATIVE_REPLY] is set), so the endpoint's reply adapter leaves it as it is. A route
mixing target types works: each attempt sets the flag anew.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from proxy import tokencount
from proxy.providers import anthropic_passthrough, openai_completions, openai_responses

if TYPE_CHECKING:
    from proxy.context import Reply, RequestContext

NATIVE_BODY = "native_body"
NATIVE_REPLY = "native_reply"
UNTRANSLATABLE = "untranslatable"    # an InvalidRequest for targets that get the request translated
GATEWAY_FIELDS = ("preset", "cache", "models")
#: a preset's params that mean the same in the endpoint's own format (applied to native requests)
PRESET_PARAMS = {"messages": ("temperature", "top_p", "top_k", "max_tokens"),
                 "completions": ("temperature", "top_p", "max_tokens", "stop", "presence_penalty",
                                 "frequency_penalty", "seed", "user", "logit_bias"),
                 "responses": ("temperature", "top_p")}

NativeCall = Callable[["RequestContext", object, dict], Awaitable["Reply"]]
HANDLERS: dict[tuple[str, str], NativeCall] = {
    ("messages", "anthropic"): anthropic_passthrough.messages,
    ("count_tokens", "anthropic"): anthropic_passthrough.count_tokens,
    ("count_tokens", "*"): tokencount.estimate_reply,
    ("completions", "openai"): openai_completions.passthrough,
    ("responses", "openai"): openai_responses.passthrough,
}
#: endpoints a provider serves natively only when its options say so: endpoint -> (option, value)
OPT_IN = {"responses": ("responses", "native")}


def handler(ctx: "RequestContext", provider) -> NativeCall | None:
    """The native call for this request on this provider, or None (translate through chat)."""
    if NATIVE_BODY not in ctx.extra:
        return None
    endpoint = ctx.endpoint
    opt_in = OPT_IN.get(endpoint)
    if opt_in is not None and provider.config.options.get(opt_in[0]) != opt_in[1]:
        return None
    return HANDLERS.get((endpoint, provider.type)) or HANDLERS.get((endpoint, "*"))


def body_for(ctx: "RequestContext", upstream_model: str) -> dict:
    """The client's request with `model` rewritten, the gateway's fields removed and, for the
    Anthropic endpoints, a preset's system prompt and sampling params applied."""
    body = dict(ctx.extra[NATIVE_BODY])
    for name in GATEWAY_FIELDS:
        body.pop(name, None)
    body["model"] = upstream_model
    if ctx.preset and ctx.endpoint in PRESET_PARAMS:
        _apply_preset(body, ctx.state.config.presets[ctx.preset], ctx.endpoint)
    effort = ctx.match.reasoning_effort if ctx.match is not None else None
    if effort and ctx.endpoint == "responses":      # a :thinking suffix
        reasoning = body.get("reasoning")
        body["reasoning"] = {"effort": effort, **(reasoning if isinstance(reasoning, dict) else {})}
    return body


def _apply_preset(body: dict, preset, endpoint: str) -> None:
    """The request's own fields win; a system prompt goes first in Anthropic's `system` or the
    Responses `instructions` (a legacy prompt has no place for one)."""
    for name in PRESET_PARAMS[endpoint]:
        if name in preset.params and name not in body:
            body[name] = preset.params[name]
    if preset.system and endpoint == "responses":
        instructions = body.get("instructions")
        body["instructions"] = preset.system + ("\n\n" + instructions if isinstance(instructions, str)
                                                and instructions else "")
    if preset.system and endpoint == "messages":
        system = body.get("system")
        if not system:
            body["system"] = preset.system
        elif isinstance(system, str):
            body["system"] = [{"type": "text", "text": preset.system}, {"type": "text", "text": system}]
        else:
            body["system"] = [{"type": "text", "text": preset.system}, *system]


def fit(ctx: "RequestContext", body: dict, caps: dict[str, bool]) -> None:
    """The translated request for a target that does not speak the client's format. A field it
    cannot honour (legacy `suffix`, `echo`, ...) is a 400 here. A translated /v1/messages request
    never fails for a control a Claude client always sends: the reasoning effort taken from
    `thinking` / `output_config.effort` is dropped for a model without reasoning (an explicit
    `reasoning_effort` on /v1/chat/completions still gets a 400)."""
    extra = ctx.extra
    if not extra:
        return
    problem = extra.get(UNTRANSLATABLE)
    if problem is not None:
        raise problem
    if ctx.endpoint == "messages" and not caps["reasoning"]:
        body.pop("reasoning_effort", None)
