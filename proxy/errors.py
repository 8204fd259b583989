"""The GatewayError tree: every error a client can see, rendered to JSON in one place.

Envelope (SPEC §6): {"error": {"message", "type", "code", "param", "tip", "trace_id"}}.
/v1/messages renders the same errors in Anthropic's shape instead.
"""
from __future__ import annotations

import re
from typing import ClassVar, Iterable

import orjson


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code = "internal_error"
    #: worth another try on the same target (a property of the type; see UpstreamError)
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 tip: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, upstream_status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.tip = tip
        self.headers = headers or {}
        self.upstream_status = upstream_status

    def to_dict(self, trace_id: str | None) -> dict:
        err = {"message": self.message, "type": self.type, "code": self.code,
               "param": self.param, "tip": self.tip, "trace_id": trace_id}
        if self.upstream_status is not None:
            err["upstream_status"] = self.upstream_status
        return {"error": err}

    def to_json(self, trace_id: str | None) -> bytes:
        return orjson.dumps(self.to_dict(trace_id))

    def to_anthropic_json(self) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": ANTHROPIC_TYPES.get(self.status, "api_error"),
                                                        "message": self.message}})


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class ContextTooLong(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "context_length_exceeded"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ProviderError(GatewayError):
    """Upstream failed (5xx, timeout, connection, bad auth of the gateway's own key)."""
    status = 502
    type = "provider_error"
    code = "upstream_error"


# The upstream errors every provider raises (proxy.providers.http maps transport failures to
# them). Retryability on the same target is the type's: an answer that never came or came
# broken is worth another try; an upstream HTTP status is retried only when the route's
# `retry_on` lists it (dispatch.is_retryable).

class UpstreamStatus(ProviderError):
    """The upstream answered an error status the request did not cause (5xx, 401/403, ...)."""
    code = "upstream_error"


class UpstreamTimeout(ProviderError):
    """No answer within `timeouts.first_byte` (or `total`)."""
    code = "upstream_timeout"
    retryable = True


class UpstreamUnreachable(ProviderError):
    """The connection failed (refused, reset, DNS, TLS) before an answer."""
    code = "upstream_unreachable"
    retryable = True


class UpstreamBadResponse(ProviderError):
    """An answer that is not what the API promises: malformed JSON or SSE (`upstream_malformed`),
    a 200 whose body is an error (`upstream_error_body`), an error event (`upstream_stream_error`)."""
    code = "upstream_malformed"
    retryable = True


class UpstreamTruncated(ProviderError):
    """The answer broke off: reset, stalled past `timeouts.idle`, ended before its end."""
    code = "upstream_broken"
    retryable = True


class UpstreamTooLarge(ProviderError):
    """A non-streamed answer over the provider's `max_response_mb` (decompressed)."""
    code = "upstream_too_large"


class Unavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "no_target_available"


class StateUnavailable(GatewayError):
    """A shared engine (PostgreSQL, Redis) holding what the request needs is down right now."""
    status = 503
    type = "api_error"
    code = "state_unavailable"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                   422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
                   503: "overloaded_error", 529: "overloaded_error"}


def from_upstream(status: int, message: str, *, provider: str, retry_after: str | None = None,
                  redact: "Redactor | None" = None) -> GatewayError:
    """Map an upstream HTTP error to the gateway's error (SPEC §6 'Upstream errors')."""
    message = sanitise(message, redact=redact)
    if status in (400, 404, 413, 422):
        return InvalidRequest(f"{provider}: {message}", code="upstream_invalid_request", status=status,
                              upstream_status=status)
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return RateLimited(f"{provider}: {message}", code="upstream_rate_limited", headers=headers,
                           upstream_status=429)
    headers = {"Retry-After": retry_after} if retry_after and status in (503, 529) else {}
    return UpstreamStatus(f"{provider} returned HTTP {status}: {message}", upstream_status=status, headers=headers)


REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8     # shorter configured values (e.g. a header "1") would destroy ordinary text
_SECRET_RE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|gsk_[A-Za-z0-9]{6,}|Bearer\s+\S+|x-api-key\S*"
                        r"|key[-_ ]?[A-Za-z0-9]{20,})", re.I)


class Redactor:
    """Replaces secrets in upstream-derived text: every configured secret by value (longest
    first, so a secret containing another is replaced whole), then anything shaped like a
    credential (the patterns, a second net). Built once per provider config."""

    __slots__ = ("values", "_by_value")

    def __init__(self, secrets: Iterable[str | None] = ()):
        self.values: tuple[str, ...] = tuple(sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS},
                                                    key=lambda s: (-len(s), s)))
        self._by_value = re.compile("|".join(map(re.escape, self.values))) if self.values else None

    def __call__(self, text: str) -> str:
        if self._by_value is not None:
            text = self._by_value.sub(REDACTED, text)
        return _SECRET_RE.sub(REDACTED, text)


_PATTERNS_ONLY = Redactor()


def sanitise(message: str, limit: int = 500, *, redact: Redactor | None = None) -> str:
    """An upstream message with its secrets replaced, then trimmed (in that order, so no
    secret is cut into a prefix that escapes the redactor)."""
    return (redact or _PATTERNS_ONLY)(str(message))[:limit]
