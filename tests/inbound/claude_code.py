"""A request shaped like the first one Claude Code 2.1.197 sends (recorded with a capture server
and condensed: the same fields, headers and query, shorter texts and 3 of its 24 tools)."""
from __future__ import annotations

BETAS = ("claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
         "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
         "effort-2025-11-24")
VERSION = "2023-06-01"
QUERY = "beta=true"
_SCHEMA = {"type": "object", "$schema": "https://json-schema.org/draft/2020-12/schema", "additionalProperties": False}
TOOLS = [
    {"name": "Bash", "description": "Executes a given bash command.",
     "input_schema": {**_SCHEMA, "properties": {"command": {"type": "string"}}, "required": ["command"]}},
    {"name": "Read", "description": "Reads a file from the local filesystem.",
     "input_schema": {**_SCHEMA, "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
                      "required": ["file_path"]}},
    {"name": "Write", "description": "Writes a file to the local filesystem.",
     "input_schema": {**_SCHEMA, "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
                      "required": ["file_path", "content"]}},
]


def request(model: str, text: str = "hello", *, stream: bool = False) -> dict:
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nToday's date is 2026-12-03.\n</system-reminder>\n"},
                {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Available agent types for the Agent tool:\n- claude: catch-all."},
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.fa0; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "\nYou are an interactive agent that helps users with software engineering tasks.",
             "cache_control": {"type": "ephemeral"}},
        ],
        "tools": TOOLS,
        "metadata": {"user_id": '{"device_id":"2d01aadf","account_uuid":"","session_id":"762c7332"}'},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": stream,
    }


def headers(key: str) -> dict:
    return {"x-api-key": key, "anthropic-version": VERSION, "anthropic-beta": BETAS,
            "content-type": "application/json", "x-app": "cli", "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)"}
