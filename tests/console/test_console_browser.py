"""The console in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser). Sign in, read the numbers of a known set of requests off the page and the charts,
create a key and use it, edit, disable and revoke it and see it refused; a normal key sees its
own usage only; a hostile key label stays text. Screenshots go to tests/artifacts/console/."""
from __future__ import annotations

import asyncio
import os
import pathlib
import time

import openai
import pytest

from tests.console.helpers import HOSTILE, usd
from tests.middlewares.helpers import APP, OPS, call

CHROMIUM = os.environ.get("MODELWAY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts" / "console"


@pytest.fixture
async def browser():
    if os.environ.get("MODELWAY_SKIP_BROWSER") == "1":
        pytest.skip("MODELWAY_SKIP_BROWSER=1")
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    from playwright.async_api import async_playwright   # here: a test extra, only these tests need it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


class Page:
    """A tab on the console that records dialogs, console errors and CSP violations."""

    def __init__(self, page):
        self.page, self.dialogs, self.errors = page, [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog):
        self.dialogs.append((dialog.type, dialog.message))
        asyncio.ensure_future(dialog.accept() if dialog.type == "confirm" else dialog.dismiss())

    async def sign_in(self, url: str, key: str) -> None:
        await self.page.goto(url + "/console")
        await self.page.fill("#signin-key", key)
        await self.page.click("#signin-form button[type=submit]")

    async def text(self, selector: str) -> str:
        return (await self.page.locator(selector).inner_text()).strip()

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def open_page(browser) -> Page:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    return Page(await context.new_page())


async def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def chat_status(gw, secret: str) -> int:
    client = gw.client(api_key=secret)
    try:
        await client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code
    finally:
        await client.close()


async def until_js(page, expression: str, timeout: float = 10.0) -> None:
    """Poll a JS expression (page.evaluate goes around the page's CSP; wait_for_function does not)."""
    assert await eventually(lambda: page.evaluate(expression), timeout), expression


def cell(row: str, window: str) -> str:
    return f'#overview-table tr[data-row="{row}"] td[data-window="{window}"]'


async def test_management_key_sees_every_number_and_manages_keys(browser, gw, http, traffic):
    tab = await open_page(browser)
    page = tab.page
    await tab.sign_in(gw.url, OPS)
    await page.wait_for_selector(cell("requests", "today") + ":text('7')")
    assert await tab.text("#who") == "management key · ops"
    for window in ("today", "7d", "30d"):
        assert await tab.text(cell("requests", window)) == "7"
        assert await tab.text(cell("errors", window)) == "1"
        assert await tab.text(cell("cost", window)) == usd(traffic.total_cost)
        assert await tab.text(cell("cache", window)) == "0.0%"
    assert (await tab.text("#p50")).endswith("ms") and (await tab.text("#p99")).endswith("ms")
    _, _, ready = await call(http, "GET", gw.url + "/readyz")
    assert await tab.text("#config-version") == ready["config_version"]
    assert OPS not in page.url and await page.evaluate("document.cookie") == ""
    assert await page.evaluate("sessionStorage.getItem('modelway.console.key')") == OPS
    await tab.shot("overview")

    # usage: the charts are images of the server's SVG, the tables beside them its numbers
    await page.click("nav [data-tab=usage]")
    await until_js(page, "Array.from(document.querySelectorAll('figure.chart img'))"
                         ".every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
    by_key = "figure[data-by=key] table"
    await page.wait_for_selector(f"{by_key} tr[data-label=app]")
    for label, who in (("app", "app"), ("other", "other")):
        assert await tab.text(f"{by_key} tr[data-label={label}] td[data-value]") == usd(traffic.cost[who])
    hostile = page.locator(f"{by_key} tr td:first-child", has_text=HOSTILE)
    assert await hostile.count() == 1                      # the label is text ...
    assert await page.locator("img[src=x]").count() == 0   # ... not an element
    by_model = "figure[data-by=model] table"
    assert await tab.text(f"{by_model} tr[data-label=mock-echo] td[data-value]") == usd(traffic.total_cost)
    await tab.shot("usage")
    await page.select_option("#usage-metric", "requests")
    await page.wait_for_selector(f"{by_key} tr[data-label=app] td[data-value='4']")
    assert await tab.text(f"{by_model} tr[data-label=broken] td[data-value]") == "1"

    # keys: create (the secret shown once), use, edit limits, disable, revoke
    await page.click("nav [data-tab=keys]")
    await page.wait_for_selector("#keys-table tbody tr")
    await page.fill("#key-create input[name=label]", "ci-bot")
    await page.fill("#key-create input[name=daily_limit]", "5")
    await page.click("#key-create button[type=submit]")
    await page.wait_for_selector("#key-secret:not([hidden])")
    secret = await tab.text("#key-secret-value")
    assert secret.startswith("mw-")
    row = page.locator("#keys-table tbody tr", has_text="ci-bot")
    await row.wait_for()
    assert secret not in await row.inner_text()            # listed masked
    await tab.shot("keys-created")
    await page.click("#key-secret-hide")
    assert await chat_status(gw, secret) == 200

    await row.get_by_role("button", name="Edit").click()
    await page.fill("#keys-table tr.editing input[name=minute_limit]", "30")
    await page.click("#keys-table tr.editing button:text('Save')")
    await page.wait_for_selector("#keys-table tbody tr:not(.editing) >> text=ci-bot")
    key_id = await row.get_attribute("data-key-id")
    _, _, record = await call(http, "GET", gw.url + f"/v1/account/keys/{key_id}", OPS)
    assert record["data"]["minute_limit"] == 30 and record["data"]["daily_limit"] == 5

    await row.get_by_role("button", name="Disable").click()
    await row.locator("td.state-disabled").wait_for()
    assert await eventually(lambda: _refused(gw, secret))
    await row.get_by_role("button", name="Enable").click()
    await row.locator("td.state-active").wait_for()
    await row.get_by_role("button", name="Revoke").click()
    await row.wait_for(state="detached")
    assert ("confirm", "Revoke key ci-bot? Clients using it are refused at once.") in tab.dialogs
    assert await eventually(lambda: _refused(gw, secret))
    _, _, listed = await call(http, "GET", gw.url + "/v1/account/keys", OPS)
    assert key_id not in {k["id"] for k in listed["data"]}

    # routes with the live cooldown, the filtered feed
    await page.click("nav [data-tab=routes]")
    broken = page.locator("#routes-table tr[data-model=broken]")
    await broken.wait_for()
    assert "cooling down" in await broken.inner_text() and "always-error" in await broken.inner_text()
    assert "always-error" in await tab.text("#cooldowns-table tbody")
    await tab.shot("routes")
    await page.click("nav [data-tab=requests]")
    await page.wait_for_selector("#requests-table tbody tr")
    await page.select_option("#requests-filter select[name=status]", "error")
    await page.click("#requests-filter button[type=submit]")
    await until_js(page, "document.querySelectorAll('#requests-table tbody tr').length === 1")
    only = await tab.text("#requests-table tbody tr")
    assert "broken" in only and "502" in only and "app" in only
    await tab.shot("requests")

    assert [d for d in tab.dialogs if d[0] != "confirm"] == []     # no alert(): the label never ran
    assert tab.errors == [], tab.errors     # no CSP violation, no failed load
    await page.click("#signout")
    assert await page.evaluate("sessionStorage.getItem('modelway.console.key')") is None
    assert await page.locator("#signin").is_visible()


async def _refused(gw, secret: str) -> bool:
    return await chat_status(gw, secret) == 401


async def test_a_normal_key_sees_its_own_usage_only(browser, gw, traffic):
    tab = await open_page(browser)
    page = tab.page
    await tab.sign_in(gw.url, "sk-wrong-0123456789abcdef")
    await page.wait_for_selector("#signin-error:text('Invalid API key.')")
    assert await page.evaluate("sessionStorage.getItem('modelway.console.key')") is None

    await page.fill("#signin-key", APP)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector(cell("requests", "today") + ":text('4')")
    assert await tab.text("#who") == "key · app"
    assert await tab.text(cell("cost", "today")) == usd(traffic.cost["app"])
    assert await tab.text(cell("errors", "today")) == "1"
    for name in ("keys", "routes"):
        assert not await page.locator(f"nav [data-tab={name}]").is_visible()
    await page.click("nav [data-tab=usage]")
    await page.wait_for_selector("figure[data-by=key] table tr[data-label=app]")
    assert await page.locator("figure[data-by=key] table tr[data-label]").count() == 1
    await page.click("nav [data-tab=requests]")
    await page.wait_for_selector("#requests-table tbody tr")
    keys = await page.locator("#requests-table tbody tr td:nth-child(2)").all_inner_texts()
    assert set(keys) == {"app"} and len(keys) == 4
    await tab.shot("own-key-requests")
    assert not tab.dialogs, tab.dialogs
    assert tab.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
