"""The service's page in a real browser (headless Chromium via Playwright): pick two movies, get the API's list."""

from __future__ import annotations

import httpx
import pytest

from recsys.service.background import serving
from tests.conftest import CHROMIUM_FLAGS, chromium_binary

pytestmark = pytest.mark.slow  # needs the smoke run


@pytest.fixture(scope="module")
def service(smoke_run):
    """`recsys-serve` (the console script) on the smoke run, on a free loopback port; its base URL."""
    with serving(smoke_run, timeout_s=120) as url:
        yield url


def test_picking_two_movies_on_the_page_shows_the_apis_list(service):
    browser_path = chromium_binary()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (make chromium installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(service + "/")
        page.wait_for_selector("#run-info:has-text('served:')")
        picked = []
        for query in ("movie 1", "movie 2"):
            page.fill("#search", query)
            page.wait_for_selector(f"#search-results[data-query='{query}'] li")
            first = page.locator("#search-results li").first
            picked.append(int(first.get_attribute("data-movie-id")))
            first.locator("button").click()
        page.wait_for_function(
            "ids => { const rows = document.querySelectorAll('#picked .chip'); return rows.length === ids.length; }",
            arg=picked,
        )
        expected = httpx.post(f"{service}/recommend/history", json={"movie_ids": picked, "k": 10}).json()
        expected_ids = [str(item["movie_id"]) for item in expected["items"]]
        page.wait_for_function(
            "ids => JSON.stringify([...document.querySelectorAll('#history-list tr[data-movie-id]')]"
            ".map(r => r.dataset.movieId)) === JSON.stringify(ids)",
            arg=expected_ids,
            timeout=30_000,
        )
        shown = page.locator("#history-list tr[data-movie-id]")
        assert shown.count() == 10 and "sequential" in shown.first.inner_text()
        # an existing user: their history beside their list, the list as /recommend serves it
        user_id = page.input_value("#user-id")
        page.click("#show-user")
        page.wait_for_selector("#user-list tr[data-movie-id]")
        served = httpx.get(f"{service}/recommend", params={"user_id": user_id, "k": 10}).json()
        rows = page.locator("#user-list tr[data-movie-id]")
        assert [rows.nth(i).get_attribute("data-movie-id") for i in range(rows.count())] == [
            str(item["movie_id"]) for item in served["items"]
        ]
        assert page.locator("#user-history tr[data-movie-id]").count() > 0
        browser.close()
