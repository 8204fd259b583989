"""Provider registry: a provider type is one module and one line here."""
from __future__ import annotations

import importlib

PROVIDER_TYPES: dict[str, str] = {
    "openai": "proxy.providers.openai:OpenAIProvider",
    "anthropic": "proxy.providers.anthropic:AnthropicProvider",
    "mock": "proxy.providers.mock:MockProvider",
}


def provider_class(type_name: str):
    module, _, attr = PROVIDER_TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module), attr)
