"""/docs (Swagger UI) and /redoc in real headless Chromium against the real API server, with every
request that would leave the server recorded and refused: the pages must render from the package
alone, as on a machine with no internet. Swagger's Authorize button takes a key and "Try it out" works.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.conftest import Proc, make_key
from tests.console.test_console import CHROMIUM, FLAGS, shot


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make browser` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


def offline_page(browser: Browser, base: str) -> tuple[Page, list[str]]:
    """A page whose requests to anywhere but ``base`` are recorded in ``outside`` and aborted."""
    host = urlsplit(base).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != host:
            outside.append(url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("pageerror", lambda e: outside.append(f"uncaught: {e}"))
    return page, outside


def test_swagger_ui_renders_offline_and_try_it_out_works_with_a_key(
    chromium: Browser, api: Proc, servers: dict[str, str]
) -> None:
    assert api.url
    key = make_key(servers, "docs-tenant")
    page, outside = offline_page(chromium, api.url)
    page.goto(f"{api.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
    assert page.locator(".opblock").count() > 20
    page.locator("button.authorize").first.click()
    page.locator(".auth-container input").first.fill(key)
    page.locator(".auth-container button.authorize").first.click()
    page.locator("button.close-modal").click()
    operation = page.locator("#operations-webhooks-get_secret_v1_webhooks_secret_get")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_have_text(
        "200", timeout=15_000
    )
    expect(operation.locator(".live-responses-table")).to_contain_text("whsec_")
    shot(page, "docs-swagger")
    page.context.close()
    assert outside == []


def test_redoc_renders_offline_and_the_console_links_to_the_docs(chromium: Browser, api: Proc) -> None:
    assert api.url
    page, outside = offline_page(chromium, api.url)
    page.goto(f"{api.url}/redoc")
    heading = page.get_by_role("heading", name="Submit a recording (upload or audio_url)")
    expect(heading.first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="WebSocket endpoints").first).to_be_visible()
    shot(page, "docs-redoc")
    page.goto(f"{api.url}/console")
    link = page.get_by_role("link", name="API reference")
    assert link.get_attribute("href") == "/docs"
    page.context.close()
    assert outside == []
