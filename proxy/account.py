"""Account endpoints (balance, activity, analytics, keys): see issue 3."""
from __future__ import annotations

from proxy.context import RequestContext
from proxy.errors import NotFound


async def account_endpoint(ctx: RequestContext):
    raise NotFound("Account endpoints need the accounting and auth middlewares.", code="not_enabled")
