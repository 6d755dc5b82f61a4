"""Fixtures every console test module shares; each module brings its own ``browser``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.console.test_console import open_page


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page, problems = open_page(browser)
    yield page
    page.context.close()
    assert not problems, problems  # no uncaught error, no CSP violation
