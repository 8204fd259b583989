"""`modelway routes`: the resolved table — model, strategy, targets, pricing, key status."""
from __future__ import annotations

import orjson

from proxy.config import Config


def cooling_targets(config: Config) -> set[tuple[str, str]]:
    """(provider, upstream model) pairs a running gateway on this data_dir is skipping now."""
    from proxy.store.metrics import live_gauge
    try:
        gauge = live_gauge(config.server.data_dir, "modelway_target_cooldown")
    except OSError:
        return set()
    return {(dict(k).get("provider"), dict(k).get("model")) for k, v in gauge.items() if v}


def rows(config: Config) -> list[dict]:
    out = []
    cooling = cooling_targets(config)
    for name, route in config.models.items():
        for i, t in enumerate(route.targets):
            pc = config.providers[t.provider]
            if pc.disabled_reason:
                status = f"disabled: {pc.disabled_reason}"
            elif pc.api_key:
                status = f"key set ({pc.api_key_env})" if pc.api_key_env else "key set"
            else:
                status = "no key needed" if pc.type in ("mock", "openai") else "no key"
            if (t.provider, t.model or name) in cooling:
                status += "; cooling down"
            out.append({"model": name, "strategy": route.strategy if len(route.targets) > 1 else "-",
                        "target": i, "provider": t.provider, "type": pc.type,
                        "upstream_model": t.model or ("<rest of name>" if route.wildcard else name),
                        "input_per_1m": route.pricing.input, "output_per_1m": route.pricing.output,
                        "context_length": route.context_length, "status": status})
    return out


def print_routes(config: Config, fmt: str = "table") -> int:
    data = rows(config)
    if fmt == "json":
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    cols = ["model", "strategy", "provider", "type", "upstream_model", "input_per_1m", "output_per_1m",
            "context_length", "status"]
    table = [[str(r[c]) if r[c] is not None else "-" for c in cols] for r in data]
    widths = [max(len(c), *(len(row[i]) for row in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0
