"""The console's Search page, a call's analytics and metadata, and a batch's analytics, in Debian's
Chromium (Playwright) against the real stack. Screenshots go to ``test-output/console-search/``."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.api.test_batches import wait_batch_done
from tests.api.test_search import CALLS, stereo
from tests.conftest import ROOT, Proc, make_key
from tests.console.test_console import CHROMIUM, FLAGS, SLOW, auth, sign_in, submit, wait_final

SHOTS = ROOT / "test-output" / "console-search"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make browser` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def calls(
    api: Proc, worker: Proc, servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A tenant of its own with the three calls of the API's search tests, as single jobs and as a batch."""
    assert api.url
    key = make_key(servers, f"console-search-{uuid.uuid4().hex[:6]}")
    batch_key = make_key(
        servers, f"console-batch-{uuid.uuid4().hex[:6]}"
    )  # its hits would double the search's
    folder = tmp_path_factory.mktemp("console-search")
    jobs = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (agent, client, lead, meta) in CALLS.items():
            path = stereo(folder / name, agent, client, lead)
            jobs[name] = submit(api.url, key, path, channels="split", metadata=json.dumps(meta))["id"]
            zf.write(path, f"calls/{name}")
        zf.writestr(
            "metadata.csv", "path,agent\n" + "".join(f"calls/{n},{c[3]['agent']}\n" for n, c in CALLS.items())
        )
    archive = {"file": ("calls.zip", buf.getvalue())}
    batch = httpx.post(
        f"{api.url}/v1/batches",
        headers=auth(batch_key),
        files=archive,
        data={"channels": "split"},
        timeout=60,
    ).json()
    for job_id in jobs.values():
        assert wait_final(api.url, key, job_id)["status"] == "completed"
    wait_batch_done(api.url, batch_key, batch["id"])
    return {"key": key, "jobs": jobs, "batch": batch["id"], "batch_key": batch_key}


def search_for(page: Page, text: str) -> None:
    page.fill("#search-q", text)
    page.click("#search-form button[type=submit]")


def test_search_page_finds_marks_filters_and_opens_the_call_at_the_phrase(
    page: Page, api: Proc, calls: dict[str, Any]
) -> None:
    assert api.url
    sign_in(page, api.url, calls["key"])
    page.click("nav a[data-nav=search]")
    expect(page.locator("main h1")).to_have_text("Search")
    search_for(page, "договор")
    hits = page.locator("#hits > li.hit")
    expect(hits).to_have_count(3, timeout=SLOW)
    # stemmed: «договора», «договором» are marked as matches of «договор»
    marked = sorted(page.locator("#hits mark").all_inner_texts())
    assert marked == ["договор", "договора", "договором"]
    shot(page, "search-hits")

    page.select_option("#search-channel", "1")
    page.click("#search-form button[type=submit]")
    expect(hits).to_have_count(2)
    page.select_option("#search-channel", "")
    page.fill("#search-meta", "agent=Петров")
    page.click("#search-form button[type=submit]")
    expect(hits).to_have_count(1)
    expect(hits.first).to_contain_text("спасибо за договором")
    page.fill("#search-meta", "")
    page.check("#search-group")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#hits > li.hit-group")).to_have_count(2)
    expect(page.locator(f"li.hit-group[data-job='{calls['jobs']['a.wav']}'] .count")).to_have_text(
        "2 matches"
    )
    page.uncheck("#search-group")

    search_for(page, '"расторгнуть договор"')
    expect(hits).to_have_count(1)
    start = float(hits.first.get_attribute("data-start") or "nan")
    hits.first.locator("a.hit-link").click()
    expect(page).to_have_url(f"{api.url}/console#/jobs/{calls['jobs']['a.wav']}?t={start:g}")
    opened = page.locator("li.phrase.from-search")
    expect(opened).to_contain_text("я хочу расторгнуть договора", timeout=SLOW)
    page.wait_for_function(
        f"() => (document.getElementById('player') || {{}}).currentTime >= {start} - 0.05",
        timeout=30_000,
    )
    shot(page, "transcript-from-search")


def test_a_bad_search_is_explained(page: Page, api: Proc, calls: dict[str, Any]) -> None:
    assert api.url
    sign_in(page, api.url, calls["key"])
    page.goto(f"{api.url}/console#/search")
    search_for(page, "-договор")
    expect(page.locator("#search-results .error-box")).to_contain_text("query_needs_a_word")
    page.fill("#search-meta", "agent")
    search_for(page, "договор")
    expect(page.locator("#search-results .error-box")).to_contain_text("key=value")


def test_the_transcript_shows_analytics_marks_and_metadata(
    page: Page, api: Proc, calls: dict[str, Any]
) -> None:
    assert api.url
    job_id = calls["jobs"]["b.wav"]
    job = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=auth(calls["key"])).json()
    a = job["analytics"]
    sign_in(page, api.url, calls["key"])
    page.goto(f"{api.url}/console#/jobs/{job_id}")
    card = page.locator("#analytics")
    expect(card).to_be_visible(timeout=SLOW)
    shares = [
        float(x)
        for x in page.locator(".share-bar .share").evaluate_all("els => els.map(e => e.dataset.share)")
    ]
    assert shares == [a["talk_share"]["0"], a["talk_share"]["1"]]
    widths = page.locator(".share-bar .share").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().width)"
    )
    assert widths[0] / (widths[0] + widths[1]) == pytest.approx(a["talk_share"]["0"], abs=0.05)
    expect(card.locator("tr[data-measure='Interruptions'] td")).to_have_text(
        [str(a["interruptions"]["0"]), str(a["interruptions"]["1"])]
    )
    expect(page.locator(".meta .metadata[data-key=agent] dd")).to_have_text("Петров")
    expect(page.locator(".meta .metadata[data-key=region] dd")).to_have_text("север")
    # b.wav's client starts while the agent speaks: overtalk is marked on the waveform
    assert a["overtalk_time"] > 0
    expect(page.locator(".waveform-mark.overtalk")).to_have_count(1, timeout=SLOW)
    shot(page, "transcript-analytics")


def test_the_batch_page_shows_aggregates_and_a_table_per_agent(
    page: Page, api: Proc, calls: dict[str, Any]
) -> None:
    assert api.url
    body = httpx.get(
        f"{api.url}/v1/batches/{calls['batch']}/analytics", headers=auth(calls["batch_key"])
    ).json()
    sign_in(page, api.url, calls["batch_key"])
    page.goto(f"{api.url}/console#/batches/{calls['batch']}")
    expect(page.locator("#batch-analytics")).to_contain_text("3 calls measured", timeout=SLOW)
    rows = page.locator("#per-group tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#per-group tr[data-group='Иванов'] td").first).to_have_text("2")
    expect(page.locator("#per-group tr[data-group='Петров'] td").first).to_have_text("1")
    mean = body["measures"]["overtalk_time"]["mean"]
    assert mean is not None
    expect(page.locator("#batch-analytics tr[data-measure=overtalk_time]")).to_be_visible()
    shot(page, "batch-analytics")
