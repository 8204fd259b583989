"""Inbound API formats other than OpenAI's, translated to and from Chat Completions at the edge.

messages.py           Anthropic Messages request -> OpenAI chat completions request
messages_response.py  OpenAI chat.completion / chunks -> Anthropic Message / SSE events
"""
from proxy.inbound.messages import THINKING_EFFORT, thinking_effort, to_openai_request
from proxy.inbound.messages_response import (MessagesStreamTranslator, anthropic_usage, encode_event,
                                             to_anthropic_message)

__all__ = ["to_openai_request", "thinking_effort", "THINKING_EFFORT", "to_anthropic_message",
           "anthropic_usage", "encode_event", "MessagesStreamTranslator"]
