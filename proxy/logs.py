"""structlog set up once: JSON lines (orjson) on stdout, bound request context, cached loggers.

Every structlog line goes through `_redact` last: the secrets of every provider configured in
this process (registered by value with `redact_in_logs`) and anything shaped like a credential
are replaced in its text, whatever put them there. The access line holds no upstream text.

The per-request access line is the one log line on the hot path; `access_line` writes it
straight to the same stream in the same JSON shape (event, level, timestamp), skipping
structlog's processor chain (a quarter of the cost, measured). The lines of the requests that
finish in one turn of the event loop go out in one write at the end of that turn
(`flush_access`), not one system call each.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

import orjson
import structlog

from proxy.errors import Redactor

_stream = None
_access_enabled = True
_pending: list[bytes] = []     # access lines waiting for the end of this event-loop turn
_pending_loop = None           # the loop that will write them
# The secrets of the providers configured in this process (kept across reloads: a retired key
# in a log line is still a key). Process-wide like the structlog configuration it serves.
_secrets: set[str] = set()
_redactor = Redactor()


def redact_in_logs(values) -> None:
    """Replace these values (a provider's api_key and header values) in every log line."""
    global _redactor
    if not _secrets.issuperset(values):
        _secrets.update(values)
        _redactor = Redactor(_secrets)


def _redact(logger, method: str, event: dict) -> dict:
    """structlog processor: every string value of the event with its secrets replaced."""
    redact = _redactor
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            text = orjson.dumps(value, default=str).decode()
            clean = redact(text)
            if clean != text:
                try:
                    event[key] = orjson.loads(clean)
                except orjson.JSONDecodeError:   # a pattern took a quote with it: keep the text
                    event[key] = clean
        elif not isinstance(value, (int, float, bool, type(None))):
            event[key] = redact(str(value))
    return event


def configure(level: str = "info", stream=None) -> None:
    global _stream, _access_enabled
    _stream = stream or sys.stdout.buffer
    threshold = getattr(logging, level.upper(), logging.INFO)
    _access_enabled = threshold <= logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.BytesLoggerFactory(_stream),
        cache_logger_on_first_use=True,
    )


_second, _prefix = -1, ""


def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it; the date and time
    part is formatted once a second (strftime costs several microseconds a call)."""
    global _second, _prefix
    now = time.time() if now is None else now
    second = int(now)
    if second != _second:
        _second, _prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_prefix}.{min(999_999, round((now - second) * 1_000_000)):06d}Z"


def access_line(record: dict) -> None:
    """Write one access-log record as a JSON line (no-op below level info)."""
    if not _access_enabled:
        return
    stream = _stream
    if stream is None:           # logging not configured (library use): go through structlog
        structlog.get_logger("modelway.access").info(**record)
        return
    record["level"] = "info"
    record["timestamp"] = utc_timestamp()
    line = orjson.dumps(record) + b"\n"
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    global _pending_loop
    if _pending:
        if loop is _pending_loop:    # a write is already scheduled for this turn of the loop
            _pending.append(line)
            return
        flush_access()               # left by a loop that stopped before its turn ended
    if loop is None:
        stream.write(line)
        stream.flush()
        return
    _pending.append(line)
    _pending_loop = loop
    loop.call_soon(flush_access)


def flush_access() -> None:
    """Write the access lines of this turn of the event loop, in one write."""
    global _pending_loop
    _pending_loop = None
    if _pending and _stream is not None:
        data = b"".join(_pending)
        _pending.clear()
        _stream.write(data)
        _stream.flush()
