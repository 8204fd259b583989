"""Helpers of the console tests: the routes, a known set of requests and the numbers they
should show, USD as the console prints it."""
from __future__ import annotations

import openai

from tests.middlewares.helpers import APP, OPS, OTHER, call, routes

HOSTILE = "<img src=x onerror=alert(1)>"       # a key label that must stay text everywhere


def console_routes() -> str:
    """mock-echo (priced), `broken` (the mock's 502; one failure cools it down for 60 s)."""
    return routes(models={"broken": {"targets": [{"provider": "mock", "model": "always-error"}],
                                     "retries": 0, "cooldown_after": 1, "cooldown_seconds": 60}})


def usd(value: float) -> str:
    """A USD amount as console.js prints it: 6 decimals, trailing zeros dropped."""
    if value >= 100:
        return f"${value:.2f}"
    return "$" + (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


class Traffic:
    def __init__(self, gw, http):
        self.gw, self.http = gw, http
        self.cost = {"app": 0.0, "other": 0.0, "hostile": 0.0}
        self.requests = {"app": 0, "other": 0, "hostile": 0}
        self.hostile_secret = self.hostile_id = None

    async def chat(self, who: str, secret: str, model: str, text: str) -> None:
        client = self.gw.client(api_key=secret)
        self.requests[who] += 1
        try:
            answer = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        except openai.APIStatusError:
            return
        finally:
            await client.close()
        self.cost[who] += answer.usage.model_extra["cost"]

    async def run(self) -> None:
        status, _, body = await call(self.http, "POST", self.gw.url + "/v1/account/keys", OPS, {"label": HOSTILE})
        assert status == 201, body
        self.hostile_secret, self.hostile_id = body["key"], body["data"]["id"]
        for text in ("hello there", "a somewhat longer question about the weather", "three"):
            await self.chat("app", APP, "mock-echo", text)
        await self.chat("app", APP, "broken", "this one fails")
        for text in ("other key, first", "other key, second request"):
            await self.chat("other", OTHER, "mock-echo", text)
        await self.chat("hostile", self.hostile_secret, "mock-echo", "from the hostile label")
        await self.gw.gateway.ledger.flush()

    @property
    def total_cost(self) -> float:
        return sum(self.cost.values())

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())
