"""OpenAI Chat Completions <-> Anthropic Messages translation, as pure functions.

- `request.to_anthropic(body, options)`: an OpenAI chat request -> an Anthropic Messages request
  (plus the beta headers it needs and the name of the forced JSON tool, if any); the messages
  and content parts are translated by `messages.convert_messages`.
- `response.to_openai(message, json_tool=...)`: an Anthropic message -> an OpenAI chat.completion.
- `stream.StreamTranslator`: Anthropic SSE events, one at a time -> OpenAI chat.completion.chunks.

Reasoning round-trip (`reasoning_details`, OpenRouter-compatible shape):
  {"type": "reasoning.text", "text": "...", "signature": "...", "format": "anthropic-claude-v1", "index": 0}
  {"type": "reasoning.encrypted", "data": "...", "format": "anthropic-claude-v1", "index": 1}
`index` numbers the reasoning blocks of one assistant message; streamed fragments with the same
index are merged back (texts concatenated, last signature wins) when a client sends them back.
"""
from proxy.anthropic.request import EFFORT_BUDGETS, Options, Translated, to_anthropic
from proxy.anthropic.response import STOP_REASONS, error_from_response, to_openai, usage_from_anthropic
from proxy.anthropic.stream import StreamTranslator

__all__ = ["EFFORT_BUDGETS", "Options", "Translated", "to_anthropic", "STOP_REASONS",
           "error_from_response", "to_openai", "usage_from_anthropic", "StreamTranslator"]
