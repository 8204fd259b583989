"""Auth: `Authorization: Bearer <key>` or `x-api-key`. Static keys and management keys come
from routes.yaml (by sha256 of the secret); managed keys from the key store (in memory,
refreshed from SQLite within a second of a change by any process). A key the store's memory
does not know is looked up in the store before it is refused (a key created a moment ago on
another worker): `before` then returns that lookup as an awaitable (see proxy.pipeline), the
only time it is not a plain call. Unknown keys are remembered for a while (KeyStore.fetch), so
junk keys do not cost a query each. `auth: {mode: none}` switches it off for a purely local
setup. Every 401 counts in `modelway_auth_failures_total{reason}`."""
from __future__ import annotations

import hashlib
import time

from aiohttp.hdrs import AUTHORIZATION

from proxy.context import KeyIdentity
from proxy.errors import AuthenticationError, Unavailable
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
        self.metrics = gateway.metrics
        self.off = config.auth_mode == "none"   # the chain is built per config
        self.static = static_identities(config)
        self.digests: dict[str, str] = {}   # presented secret -> its sha256, for the secrets seen lately
        self.bearers: dict[str, str] = {}   # Authorization header that named one -> the same sha256

    def before(self, ctx):
        if self.off:
            return None
        request = ctx.request
        header = request.headers.get(AUTHORIZATION)
        digest = self.bearers.get(header) if header is not None else None
        if digest is None:
            digest = self._digest(request, header)
        found = self.static.get(digest)
        if found is not None:
            identity, disabled, expires = found
            if disabled:
                raise self._refused("This API key is disabled.", "key_disabled")
            if expires and expires <= time.time():
                raise self._refused("This API key has expired.", "key_expired")
            ctx.key = identity
            return None
        keys = self.gateway.keys
        record = keys.lookup(digest)
        if record is None:
            if keys.known_missing(digest):
                raise self._refused("Invalid API key.", "invalid_api_key")
            return self._fetch(ctx, digest)
        self._admit(ctx, record)
        return None

    async def _fetch(self, ctx, digest: str) -> None:
        """The slow path: a key this worker does not know, looked up in the key store."""
        try:
            record = await self.gateway.keys.fetch(digest)
        except Exception as exc:    # the store cannot answer: never let an unchecked key in
            self.metrics.inc("modelway_key_store_lookups_total", ("error",))
            raise Unavailable("The key store cannot be read; try again shortly.",
                              code="key_store_unavailable") from exc
        self.metrics.inc("modelway_key_store_lookups_total", ("missing" if record is None else "found",))
        if record is None:
            raise self._refused("Invalid API key.", "invalid_api_key")
        self._admit(ctx, record)

    def _admit(self, ctx, record: dict) -> None:
        if record.get("disabled"):
            raise self._refused("This API key is disabled.", "key_disabled")
        expires = record.get("expires_at")
        if expires and expires <= time.time():
            raise self._refused("This API key has expired.", "key_expired")
        ctx.key = managed_identity(record)

    def _refused(self, message: str, code: str) -> AuthenticationError:
        self.metrics.inc("modelway_auth_failures_total", (code,))
        return AuthenticationError(message, code=code)

    def _digest(self, request, header: str | None) -> str:
        """The sha256 of the presented secret, memoised per secret and per Bearer header."""
        secret = bearer_token(header)
        bearer = secret is not None
        if not bearer:
            secret = request.headers.get("x-api-key") or None
        if secret is None:
            raise self._refused("Missing API key. Send it as 'Authorization: Bearer <key>' or "
                                "'x-api-key: <key>'.", "missing_api_key")
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
