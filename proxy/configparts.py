"""The sections of routes.yaml, each read by one function (see proxy.config for the types)."""
from __future__ import annotations

import difflib
import re
from types import MappingProxyType

from proxy.config import (BOOL, BUILTIN_MIDDLEWARES, CAPABILITIES, COUNT, DEFAULT_MIDDLEWARES, INT, LIST,
                          MAP, MONEY, NUM, POSITIVE, RETRY_ON, STR, CacheConfig, Config, LedgerConfig,
                          MiddlewareSpec, ModelRoute, Pricing, Preset, ProviderConfig, ResponsesConfig,
                          ServerConfig, StateConfig, StaticKey, Target, Timeouts, _Reader)
from proxy.errors import GatewayError
from proxy.routing import RouteTable, resolve
from proxy.state.urls import database_problems, redis_problems
from proxy.yamlsrc import interpolate, path_str

TOP = {"server": (MAP, None), "middlewares": (LIST, None), "providers": (MAP, None),
       "models": (MAP, None), "presets": (MAP, None), "keys": (LIST, None),
       "management_keys": (LIST, None), "cache": (MAP, None), "auth": (MAP, None),
       "responses": (MAP, None), "ledger": (MAP, None),
       "state": (MAP, None)}
SERVER = {"host": (STR, "127.0.0.1"), "port": (INT, 8080), "workers": (INT, 1), "data_dir": (STR, "./var"),
          "max_body_mb": (NUM, 32.0), "max_json_depth": (INT, 64), "drain_seconds": (NUM, 30.0),
          "watch_config": (BOOL, False), "body_timeout": (NUM, 30.0),
          "header_timeout": (POSITIVE, 10.0), "keepalive_timeout": (POSITIVE, 75.0),
          "max_connections": (COUNT, 4096), "sse_ping_seconds": (MONEY, 15.0)}
TIMEOUTS = {"connect": (NUM, 10.0), "first_byte": (NUM, 120.0), "idle": (NUM, 60.0), "total": (NUM, 600.0)}
PROVIDER = {"type": (STR, None), "base_url": (STR, None), "api_key": (STR, None), "timeouts": (MAP, None),
            "headers": (MAP, None), "options": (MAP, None), "max_connections": (INT, 256),
            "max_response_mb": (POSITIVE, 16.0)}
MODEL = {"targets": (LIST, None), "strategy": (STR, "fallback"), "pricing": (MAP, None),
         "context_length": (INT, None, True), "capabilities": (MAP, None), "auto_cache": (BOOL, False),
         "cache": (BOOL, None, True), "max_tokens": (INT, None, True), "retries": (INT, 2),
         "retry_on": (LIST, None), "cooldown_seconds": (MONEY, 30.0), "cooldown_after": (COUNT, 5),
         "owned_by": (STR, None)}
TARGET = {"provider": (STR, None), "model": (STR, None), "weight": (NUM, 1.0)}
PRICING = {"input": (MONEY, 0.0), "output": (MONEY, 0.0), "cached_input": (MONEY, None, True),
           "cache_write": (MONEY, None, True)}
PRESET = {"model": (STR, None), "system": (STR, None, True), "params": (MAP, None), "keys": (LIST, None)}
KEY = {"label": (STR, None), "sha256": (STR, None), "allowed_models": (LIST, None),
       "minute_limit": (COUNT, None, True), "daily_limit": (MONEY, None, True), "balance": (MONEY, None, True),
       "max_concurrent": (COUNT, None, True), "expires_at": (NUM, None, True), "disabled": (BOOL, False)}
MGMT_KEY = {"label": (STR, None), "sha256": (STR, None)}
CACHE = {"enabled": (BOOL, False), "ttl": (POSITIVE, 3600.0), "size_limit_mb": (POSITIVE, 1024.0),
         "shared": (BOOL, False)}
AUTH = {"mode": (STR, "keys")}
RESPONSES = {"retention_days": (POSITIVE, 30.0)}
LEDGER = {"retention_days": (COUNT, 90, True)}
STATE = {"redis": (STR, None, True), "database": (STR, None, True), "redis_timeout_ms": (POSITIVE, 50.0),
         "database_timeout_ms": (POSITIVE, 1000.0), "lease_seconds": (POSITIVE, 30.0)}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def build(r: _Reader, data, filename: str, version: str) -> Config:
    top = r.fields(data, (), TOP) or {}
    warnings: list[str] = []
    providers = _providers(r, top["providers"] or {}, warnings)
    declared = set(top["providers"] or {})   # a provider with its own problem is not also "unknown"
    models = _models(r, top["models"] or {}, providers, declared)
    secrets: dict = {}   # sha256 -> (path, label) of the first key with it, across both lists
    keys = _keys(r, top["keys"] or [], ("keys",), KEY, secrets)
    management_keys = _keys(r, top["management_keys"] or [], ("management_keys",), MGMT_KEY, secrets)
    key_names = {k.label for k in keys + management_keys} | {f"static:{k.label}" for k in keys}
    presets = _presets(r, top["presets"] or {}, models, set(map(str, top["models"] or {})), key_names, warnings)
    return Config(
        path=filename, version=version,
        server=ServerConfig(**(r.fields(top["server"] or {}, ("server",), SERVER) or {})),
        middlewares=_middlewares(r, top["middlewares"]),
        providers=MappingProxyType(providers), models=MappingProxyType(models),
        presets=MappingProxyType(presets), keys=tuple(keys), management_keys=tuple(management_keys),
        cache=CacheConfig(**(r.fields(top["cache"] or {}, ("cache",), CACHE) or {})),
        auth_mode=_auth_mode(r, top["auth"]), warnings=tuple(warnings),
        responses=ResponsesConfig(**(r.fields(top["responses"] or {}, ("responses",), RESPONSES) or {})),
        ledger=LedgerConfig(**(r.fields(top["ledger"] or {}, ("ledger",), LEDGER) or {})),
        state=_state(r, top["state"]))


def _state(r: _Reader, value) -> StateConfig:
    """The engines to share state through; each URL checked (never echoed: it may hold a password)."""
    f = r.fields(value or {}, ("state",), STATE) or {}
    for name, problems in (("redis", redis_problems), ("database", database_problems)):
        f[name] = (f.get(name) or "").strip() or None      # "" (e.g. "${REDIS_URL:-}") leaves it off
        for problem in problems(f[name]) if f[name] else ():
            r.problem(("state", name), problem)
    return StateConfig(**f) if f else StateConfig()


def _auth_mode(r: _Reader, value) -> str:
    mode = (r.fields(value or {}, ("auth",), AUTH) or {}).get("mode", "keys")
    if mode not in ("keys", "none"):
        r.problem(("auth", "mode"), f"must be 'keys' or 'none', got {mode!r}")
    return mode


def _middlewares(r: _Reader, value) -> tuple[MiddlewareSpec, ...]:
    if value is None:
        return tuple(MiddlewareSpec(n) for n in DEFAULT_MIDDLEWARES)
    out = []
    for i, item in enumerate(value):
        path = ("middlewares", i)
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            if options is None:
                options = {}
            if not isinstance(options, dict):
                r.problem(path, f"options of middleware {name!r} must be a mapping")
                continue
        else:
            r.problem(path, "must be a name or {name: {options}}")
            continue
        if name not in BUILTIN_MIDDLEWARES and ":" not in name:
            r.problem(path, f"unknown middleware {name!r}; built-ins: {', '.join(BUILTIN_MIDDLEWARES)}; "
                            "custom ones are named 'package.module:factory'")
            continue
        out.append(MiddlewareSpec(name, MappingProxyType(options)))
    return tuple(out)


def _providers(r: _Reader, value: dict, warnings: list[str]) -> dict[str, ProviderConfig]:
    from proxy.providers import PROVIDER_TYPES
    out = {}
    for name, spec in value.items():
        path = ("providers", name)
        f = r.fields(spec if spec is not None else {}, path, PROVIDER, required=("type",), raw=("api_key",))
        if f is None:
            continue
        if f["type"] not in PROVIDER_TYPES:
            r.problem(path + ("type",), f"unknown provider type {f['type']!r}; known: {', '.join(PROVIDER_TYPES)}")
            continue
        api_key, key_env, disabled = None, None, None
        raw_key = spec.get("api_key") if isinstance(spec, dict) else None
        if raw_key is not None:
            if not isinstance(raw_key, str):
                r.problem(path + ("api_key",), "must be a string such as \"${OPENAI_API_KEY}\"")
            else:
                m = _ENV_REF.match(raw_key.strip())
                key_env = m.group(1) if m else None
                api_key, missing = interpolate(raw_key, r.env)
                if missing:
                    disabled = f"environment variable {missing[0]} is not set"
                    warnings.append(f"provider {name!r} disabled: {disabled}")
                    api_key = None
        if f["type"] in ("openai", "anthropic") and not f["base_url"]:
            f["base_url"] = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}[f["type"]]
        timeouts = Timeouts(**(r.fields(f["timeouts"] or {}, path + ("timeouts",), TIMEOUTS) or {}))
        headers = {}
        for hk, hv in (f["headers"] or {}).items():
            if r.check(hv, STR, path + ("headers", hk)):
                headers[str(hk)] = r.interp(hv, path + ("headers", hk))
        options = _provider_options(r, f["type"], f["options"] or {}, path + ("options",))
        out[name] = ProviderConfig(name=name, type=f["type"], base_url=(f["base_url"] or "").rstrip("/") or None,
                                   api_key=api_key, api_key_env=key_env, disabled_reason=disabled,
                                   timeouts=timeouts, headers=MappingProxyType(headers),
                                   options=MappingProxyType(options), max_connections=f["max_connections"],
                                   max_response_mb=f["max_response_mb"])
    return out


def _provider_options(r: _Reader, ptype: str, value: dict, path) -> dict:
    from proxy.providers import provider_class
    cls = provider_class(ptype)
    spec = getattr(cls, "OPTIONS", {})
    if not spec and not value:
        return {}
    out = r.fields(value, path, spec) or {}
    for name, choices in getattr(cls, "OPTION_CHOICES", {}).items():
        if name in value and out.get(name) not in choices:
            r.problem(path + (name,), f"must be one of {', '.join(choices)}, got {value[name]!r}")
            out[name] = spec[name][1]
    return out


def _models(r: _Reader, value: dict, providers: dict, declared: set) -> dict[str, ModelRoute]:
    out = {}
    for name, spec in value.items():
        path = ("models", name)
        f = r.fields(spec if spec is not None else {}, path, MODEL, required=("targets",))
        if f is None:
            continue
        name = str(name)
        if "*" in name and not name.endswith("/*") and name != "*":
            r.problem(path, "wildcard routes must end with '/*' (e.g. 'openai/*')")
        targets = []
        for i, t in enumerate(f["targets"] or []):
            tf = r.fields(t, path + ("targets", i), TARGET, required=("provider",))
            if not tf or tf["provider"] is None:
                continue
            if tf["provider"] not in providers:
                if tf["provider"] in declared:
                    continue
                close = difflib.get_close_matches(tf["provider"], list(providers), n=1)
                r.problem(path + ("targets", i, "provider"), f"unknown provider {tf['provider']!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
                continue
            targets.append(Target(**tf))
        if f["targets"] is not None and not f["targets"]:
            r.problem(path + ("targets",), "needs at least one target")
        if f["strategy"] not in ("fallback", "weighted"):
            r.problem(path + ("strategy",), f"must be 'fallback' or 'weighted', got {f['strategy']!r}")
        caps = {}
        for ck, cv in (f["capabilities"] or {}).items():
            if ck not in CAPABILITIES:
                r.problem(path + ("capabilities", ck), f"unknown capability {ck!r}; known: {', '.join(CAPABILITIES)}")
            elif r.check(cv, BOOL, path + ("capabilities", ck)):
                caps[ck] = cv
        retry_on = RETRY_ON   # (ModelRoute.retry_on is a slot descriptor, not the default)
        if f["retry_on"] is not None:
            retry_on = tuple(s for j, s in enumerate(f["retry_on"]) if r.check(s, INT, path + ("retry_on", j)))
        pricing = Pricing(**(r.fields(f["pricing"] or {}, path + ("pricing",), PRICING) or {}))
        out[name] = ModelRoute(name=name, targets=tuple(targets), strategy=f["strategy"], pricing=pricing,
                               context_length=f["context_length"], capabilities=MappingProxyType(caps),
                               auto_cache=f["auto_cache"], cache=f["cache"], max_tokens_default=f["max_tokens"],
                               retries=f["retries"], retry_on=retry_on, cooldown_seconds=f["cooldown_seconds"],
                               cooldown_after=f["cooldown_after"], owned_by=f["owned_by"])
    return out


def _presets(r: _Reader, value: dict, models: dict, declared: set, key_names: set,
             warnings: list[str]) -> dict[str, Preset]:
    """Presets, each naming a model the router resolves (or `any`); `keys` entries that name no
    key of routes.yaml are only warned about: they may be managed keys' labels or ids."""
    out = {}
    table = RouteTable.build(models)
    for name, spec in value.items():
        path = ("presets", name)
        f = r.fields(spec, path, PRESET, required=("model",))
        if not f or f["model"] is None:
            continue
        if f["model"] != "any" and f["model"] not in declared and not _routed(f["model"], table):
            close = difflib.get_close_matches(f["model"], table.names(), n=1)
            r.problem(path + ("model",), f"preset {name!r} names model {f['model']!r}, which no route matches"
                      + (f" (did you mean {close[0]!r}?)" if close else "; use a name under models: or 'any'"))
        keys = tuple(str(k) for k in f["keys"]) if f["keys"] is not None else None
        for k in keys or ():
            if k not in key_names:
                warnings.append(f"preset {name!r}: keys entry {k!r} names no key in routes.yaml "
                                "(fine if it is a managed key's label or id)")
        out[str(name)] = Preset(name=str(name), model=f["model"], system=f["system"],
                                params=MappingProxyType(dict(f["params"] or {})), keys=keys)
    return out


def _routed(model: str, table: RouteTable) -> bool:
    try:
        resolve(model, table)
    except GatewayError:
        return False
    return True


def _keys(r: _Reader, value: list, path, spec, secrets: dict) -> list[StaticKey]:
    out, labels = [], {}
    for i, item in enumerate(value):
        f = r.fields(item, path + (i,), spec, required=("label", "sha256"))
        if not f or f["sha256"] is None:
            continue
        if not _HEX64.match(f["sha256"].lower()):
            r.problem(path + (i, "sha256"), "must be the 64-character hex sha256 of the key "
                                           "(run `modelway keys hash`), never the key itself")
            continue
        f["sha256"] = f["sha256"].lower()
        first_path, first_label = secrets.setdefault(f["sha256"], (path + (i,), f["label"]))
        if first_path != path + (i,):
            r.problem(path + (i, "sha256"), f"duplicate key: {f['label']!r} has the same sha256 as "
                                           f"{first_label!r} ({path_str(first_path)}); list each key once")
            continue
        first = labels.setdefault(f["label"], i)
        if first != i:     # the label is the key's id (static:<label>) in the ledger and the limits
            r.problem(path + (i, "label"), f"duplicate label {f['label']!r} (also {path_str(path + (first,))}):"
                                          " a key's label is its id in the ledger and the limits")
            continue
        if "allowed_models" in f:
            f["allowed_models"] = tuple(str(m) for m in (f["allowed_models"] or ()))
        out.append(StaticKey(**f))
    return out
