"""Auth: `Authorization: Bearer <key>` or `x-api-key`. Static keys and management keys come
from routes.yaml (by sha256 of the secret); managed keys from the key store (in memory,
refreshed from SQLite within a second of a change by any process). `auth: {mode: none}`
switches it off for a purely local setup."""
from __future__ import annotations

import hashlib
import time

from aiohttp.hdrs import AUTHORIZATION

from proxy.context import KeyIdentity
from proxy.errors import AuthenticationError
from proxy.pipeline import Middleware

DIGEST_MEMO = 1024


def static_identities(config) -> dict[str, tuple[KeyIdentity, bool, float | None]]:
    """sha256 -> (identity, disabled, expires_at) of the keys in routes.yaml."""
    out = {}
    for k in config.keys:
        out[k.sha256] = (KeyIdentity(id=f"static:{k.label}", label=k.label, allowed_models=k.allowed_models,
                                     minute_limit=k.minute_limit, daily_limit=k.daily_limit, balance=k.balance,
                                     max_concurrent=k.max_concurrent, source="static"), k.disabled, k.expires_at)
    for k in config.management_keys:
        out[k.sha256] = (KeyIdentity(id=f"management:{k.label}", label=k.label, management=True,
                                     source="management"), False, None)
    return out


def managed_identity(record: dict) -> KeyIdentity:
    return KeyIdentity(id=record["id"], label=record.get("label") or record["id"],
                       allowed_models=tuple(record.get("allowed_models") or ()),
                       minute_limit=record.get("minute_limit"), daily_limit=record.get("daily_limit"),
                       balance=record.get("balance"), max_concurrent=record.get("max_concurrent"),
                       source="managed")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


class Auth(Middleware):
    name = "auth"
    needs_body = False

    def __init__(self, gateway, config):
        self.gateway = gateway
        self.off = config.auth_mode == "none"   # the chain is built per config
        self.static = static_identities(config)
        self.digests: dict[str, str] = {}   # presented secret -> its sha256, for the secrets seen lately
        self.bearers: dict[str, str] = {}   # Authorization header that named one -> the same sha256

    def before(self, ctx) -> None:
        if self.off:
            return
        request = ctx.request
        header = request.headers.get(AUTHORIZATION)
        digest = self.bearers.get(header) if header is not None else None
        if digest is None:
            digest = self._digest(request, header)
        found = self.static.get(digest)
        if found is not None:
            identity, disabled, expires = found
            if disabled:
                raise AuthenticationError("This API key is disabled.", code="key_disabled")
            if expires and expires <= time.time():
                raise AuthenticationError("This API key has expired.", code="key_expired")
        else:
            record = self.gateway.keys.lookup(digest)
            if record is None:
                raise AuthenticationError("Invalid API key.", code="invalid_api_key")
            if record.get("disabled"):
                raise AuthenticationError("This API key is disabled.", code="key_disabled")
            expires = record.get("expires_at")
            if expires and expires <= time.time():
                raise AuthenticationError("This API key has expired.", code="key_expired")
            identity = managed_identity(record)
        ctx.key = identity

    def _digest(self, request, header: str | None) -> str:
        """The sha256 of the presented secret, memoised per secret and per Bearer header."""
        secret = bearer_token(header)
        bearer = secret is not None
        if not bearer:
            secret = request.headers.get("x-api-key") or None
        if secret is None:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>' or "
                                      "'x-api-key: <key>'.", code="missing_api_key")
        if len(self.digests) >= DIGEST_MEMO or len(self.bearers) >= DIGEST_MEMO:   # a scan? start over
            self.digests.clear()
            self.bearers.clear()
        digest = self.digests.get(secret)
        if digest is None:
            digest = self.digests[secret] = hashlib.sha256(secret.encode()).hexdigest()
        if bearer:
            self.bearers[header] = digest
        return digest


def auth(gateway, config) -> Auth:
    return Auth(gateway, config)
