"""The web console (``/console``) end to end in real headless Chromium (Debian's ``chromium``, driven by
Playwright) against the real stack: uvicorn, Postgres, Redis and a Celery worker. Only what a person
does: sign in, upload, open a transcript, click, search, download, stream the (fake) microphone.

A screenshot of every page is saved under ``test-output/console/`` at the repository root.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from shared.dev.models.tones import synthesize
from tests.api.test_batches import wait_batch_done
from tests.conftest import KIT_AUDIO, ROOT, Proc, make_key, start_api

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ROOT / "test-output" / "console"
LIVE = ["добрый день", "чем помочь"]
SLOW = 120_000  # ms: a job on the test worker, on a busy 2-core machine


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_final(url: str, key: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not final: {job}")


def submit(url: str, key: str, path: Path, **fields: str) -> dict[str, Any]:
    with path.open("rb") as f:
        got = httpx.post(
            f"{url}/v1/jobs", headers=auth(key), files={"file": (path.name, f)}, data=fields, timeout=30
        )
    assert got.status_code == 202, got.text
    job: dict[str, Any] = got.json()
    return job


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(api: Proc) -> str:
    """The API's address (the real uvicorn server of conftest)."""
    assert api.url
    return api.url


@pytest.fixture(scope="module")
def shots_folder(request: pytest.FixtureRequest) -> Iterator[Path]:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    yield SHOTS
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nconsole screenshots: {SHOTS}")


@pytest.fixture(scope="module")
def driver() -> Iterator[Playwright]:
    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make browser` installs it"
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(driver: Playwright, shots_folder: Path) -> Iterator[Browser]:
    b = driver.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
    yield b
    b.close()


def open_page(browser: Browser, width: int = 1280, height: int = 900) -> tuple[Page, list[str]]:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    page.on(  # nothing may come from outside the server (the console works with no internet)
        "request",
        lambda r: (
            problems.append(f"left the server: {r.url}")
            if urlsplit(r.url).scheme in ("http", "https", "ws", "wss")
            and urlsplit(r.url).hostname not in ("127.0.0.1", "localhost")
            else None
        ),
    )
    page.on(
        "console",
        lambda m: (
            problems.append(f"console: {m.text}")
            if m.type == "error" and "Content Security Policy" in m.text
            else None
        ),
    )
    return page, problems


def sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/console")
    page.fill("#api-key", key)
    page.click("form.signin button[type=submit]")
    expect(page.locator("main h1")).to_have_text("Jobs")


@pytest.fixture(scope="module")
def mono_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console-mono") / "short.wav"
    sf.write(path, synthesize(["да"])[0], 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def broken_flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FLAC whose header is fine (the API accepts it) and whose data stops halfway: the worker
    fails the job with corrupt_audio."""
    data = (KIT_AUDIO / "tone_example_short.flac").read_bytes()
    path = tmp_path_factory.mktemp("console-broken") / "broken.flac"
    path.write_bytes(data[: len(data) // 2])
    return path


# -- sign in ------------------------------------------------------------------------------------------


def test_console_is_served_with_a_strict_policy(base: str) -> None:
    page = httpx.get(f"{base}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script" in page.text and "<script>" not in page.text  # modules by src only, nothing inline
    assert not re.search(r"(https?:)?//(?!localhost)[a-z0-9.-]+\.[a-z]{2,}/", page.text.split("<footer")[0])
    js = httpx.get(f"{base}/console/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and js.headers["etag"]
    again = httpx.get(f"{base}/console/app.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{base}/console/style.css").headers["content-type"].startswith("text/css")
    for bad in ("../main.py", "..%2Fmain.py", ".hidden.js", "views/../../errors.py", "nope.js"):
        got = httpx.get(f"{base}/console/{bad}")
        assert got.status_code == 404 and got.json()["error"]["code"] == "not_found", bad


def test_sign_in_refuses_a_bad_key_then_shows_the_jobs(base: str, api_key: str, page: Page) -> None:
    page.goto(f"{base}/console")
    expect(page.locator("main h1")).to_have_text("Sign in")
    shot(page, "01-sign-in")
    page.fill("#api-key", "tone_nope_not-a-key")
    page.click("form.signin button[type=submit]")
    expect(page.locator(".error-box")).to_contain_text("This API key was not accepted")
    expect(page.locator("#api-key")).to_have_attribute("aria-invalid", "true")
    shot(page, "02-sign-in-bad-key")
    page.fill("#api-key", api_key)
    page.click("form.signin button[type=submit]")
    expect(page.locator("main h1")).to_have_text("Jobs")
    assert api_key not in page.url
    assert page.evaluate("() => Object.values(sessionStorage)") == [api_key]
    page.reload()  # the key stays for the tab's session
    expect(page.locator("main h1")).to_have_text("Jobs")
    page.click("#signout")
    expect(page.locator("main h1")).to_have_text("Sign in")
    assert page.evaluate("() => sessionStorage.length") == 0


# -- upload, transcript, seek, search, download ---------------------------------------------------------


def test_upload_then_the_transcript_as_a_dialogue_that_seeks_searches_and_downloads(
    base: str, worker: Proc, api_key: str, page: Page, call_wav: Path, call_phrases: list[dict[str, Any]]
) -> None:
    sign_in(page, base, api_key)
    page.click("nav a[data-nav=upload]")
    expect(page.locator("main h1")).to_have_text("Upload")
    page.select_option("#upload-channels", "split")
    page.set_input_files("#upload-files", str(call_wav))
    opened = page.locator("#upload-list a", has_text="Open transcript")
    expect(opened).to_be_visible(timeout=SLOW)
    expect(page.locator("#upload-list .badge-completed")).to_have_count(1)
    shot(page, "03-upload")
    opened.click()

    # the dialogue: agent left, client right, in time order, with times
    expect(page.locator("main h1")).to_have_text(call_wav.name)
    rows = page.locator("#dialogue.split > li.phrase")
    expect(rows).to_have_count(len(call_phrases))
    got = [
        (
            int(rows.nth(i).get_attribute("data-channel") or -1),
            rows.nth(i).locator(".phrase-text").inner_text(),
        )
        for i in range(len(call_phrases))
    ]
    assert got == [(p["channel"], p["text"]) for p in call_phrases]
    agent_box = page.locator("li.phrase.ch0 .bubble").first.bounding_box()
    client_box = page.locator("li.phrase.ch1 .bubble").first.bounding_box()
    assert agent_box and client_box and client_box["x"] > agent_box["x"] + agent_box["width"] / 2
    expect(page.locator(".phrase.ch0 .speaker").first).to_have_text("Agent")
    expect(page.locator(".phrase.ch1 .speaker").first).to_have_text("Client")

    # the player: the recording as 8 kHz WAV from the API, a two-lane waveform
    expect(page.locator(".waveform canvas")).to_have_count(1, timeout=30_000)
    expect(page.locator(".waveform-labels span")).to_have_text(["Agent", "Client"])
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    duration = page.evaluate("() => document.getElementById('player').duration")
    assert duration == pytest.approx(sf.info(call_wav).duration, abs=0.05)
    shot(page, "04-transcript")

    # clicking a phrase seeks there and highlights it as the one being played
    second = call_phrases[1]
    rows.nth(1).locator("button.time").click()
    now, active = page.evaluate(
        "() => { const a = document.getElementById('player'); a.pause();"
        " const active = [...document.querySelectorAll('li.phrase.active')];"
        " return [a.currentTime, active.map(e => +e.dataset.index)]; }"
    )
    assert second["start_time"] - 0.01 <= now < second["end_time"], (now, second)
    assert active == [1]
    # ...and a word seeks to the word
    last = call_phrases[2]
    word = last["words"][-1]
    rows.nth(2).locator(".word").last.click()
    now = page.evaluate(
        "() => { const a = document.getElementById('player'); a.pause(); return a.currentTime; }"
    )
    assert word["start"] - 0.01 <= now < last["end_time"] + 0.2, (now, word)
    expect(rows.nth(2)).to_have_class(re.compile(r"\bactive\b"))

    # search highlights the matches and dims the other phrases
    page.fill("#transcript-search", "ДЕЛА")
    expect(page.locator("#dialogue mark")).to_have_text(["дела"])
    expect(page.locator("#search-count")).to_have_text("1 match")
    expect(page.locator("li.phrase.has-hit")).to_have_count(1)
    page.press("#transcript-search", "Enter")
    expect(page.locator("#search-count")).to_have_text("1 of 1")
    shot(page, "05-transcript-search")
    page.fill("#transcript-search", "")
    expect(page.locator("#dialogue mark")).to_have_count(0)

    # downloads: the API's own SRT, fetched with the key, saved through a blob URL
    job_id = page.url.rsplit("/", 1)[-1]
    with page.expect_download() as info:
        page.click("button[data-format=srt]")
    download = info.value
    assert download.suggested_filename == "call-0001.srt"
    assert download.url.startswith("blob:") and api_key not in download.url
    srt = httpx.get(f"{base}/v1/jobs/{job_id}/transcript?format=srt", headers=auth(api_key)).text
    assert Path(download.path()).read_text(encoding="utf-8") == srt
    assert "[agent]" in srt and "[client]" in srt
    with page.expect_download() as info:
        page.click("button[data-format=json]")
    saved = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert [(p["channel"], p["text"]) for p in saved["phrases"]] == got

    # a narrow screen: the dialogue still reads, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    expect(rows.first).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "05b-transcript-narrow")


def test_the_audio_endpoint_plays_any_format_as_8khz_wav(
    base: str, worker: Proc, api_key: str, other_key: str, tmp_path: Path
) -> None:
    job = submit(base, api_key, KIT_AUDIO / "call_stereo_8k_ulaw.wav", channels="split")
    got = httpx.get(f"{base}/v1/jobs/{job['id']}/audio", headers=auth(api_key), timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "audio/wav", got.text
    info = sf.info(io.BytesIO(got.content))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 2, "PCM_16")
    assert info.duration == pytest.approx(13.02, abs=0.01)
    mp3 = submit(base, api_key, KIT_AUDIO / "agent_16k.mp3")
    got = httpx.get(f"{base}/v1/jobs/{mp3['id']}/audio", headers=auth(api_key), timeout=30)
    info = sf.info(io.BytesIO(got.content))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    assert info.duration == pytest.approx(5.52, abs=0.06)
    other = httpx.get(f"{base}/v1/jobs/{job['id']}/audio", headers=auth(other_key))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{base}/v1/jobs/{job['id']}/audio").status_code == 401
    wait_final(base, api_key, job["id"])
    wait_final(base, api_key, mp3["id"])
    assert httpx.delete(f"{base}/v1/jobs/{mp3['id']}", headers=auth(api_key)).status_code == 204
    gone = httpx.get(f"{base}/v1/jobs/{mp3['id']}/audio", headers=auth(api_key))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert (
        "/v1/jobs/{job_id}/audio" in paths and "404" in paths["/v1/jobs/{job_id}/audio"]["get"]["responses"]
    )


# -- errors in words -----------------------------------------------------------------------------------


def test_several_recordings_dropped_at_once_are_each_transcribed(
    base: str, worker: Proc, api_key: str, page: Page, call_wav: Path, mono_wav: Path
) -> None:
    import base64

    sign_in(page, base, api_key)
    page.goto(f"{base}/console#/upload")
    files = [(p.name, base64.b64encode(p.read_bytes()).decode()) for p in (call_wav, mono_wav)]
    # what a drag from the file manager delivers: a drop event whose DataTransfer holds the files
    transfer = page.evaluate_handle(
        """(files) => { const t = new DataTransfer();
            for (const [name, b64] of files) {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              t.items.add(new File([bytes], name, { type: "audio/wav" }));
            }
            return t; }""",
        files,
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class(re.compile(r"\bdragging\b"))
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#upload-list .badge-completed")).to_have_count(2, timeout=SLOW)
    expect(page.locator("#upload-list")).to_contain_text(call_wav.name)
    expect(page.locator("#upload-list")).to_contain_text(mono_wav.name)


def test_a_file_that_is_not_audio_shows_unsupported_format(
    base: str, api_key: str, page: Page, tmp_path: Path
) -> None:
    bad = tmp_path / "noise_bytes.wav"
    shutil.copy(KIT_AUDIO / "bad" / "noise_bytes.wav", bad)
    direct = httpx.post(
        f"{base}/v1/jobs", headers=auth(api_key), files={"file": (bad.name, bad.read_bytes())}
    )
    assert direct.json()["error"]["code"] == "unsupported_format"
    sign_in(page, base, api_key)
    page.goto(f"{base}/console#/upload")
    page.set_input_files("#upload-files", str(bad))
    box = page.locator("#upload-list .error-box")
    expect(box).to_contain_text("Unsupported format")
    expect(box).to_contain_text("Code: unsupported_format")
    expect(page.locator("body")).not_to_contain_text("Traceback")
    shot(page, "06-upload-unsupported-format")


def test_a_file_over_the_upload_limit_shows_too_large(
    platform_env: dict[str, str], logs: Path, api_key: str, browser: Browser, call_wav: Path
) -> None:
    small = start_api({**platform_env, "TONE_MAX_UPLOAD_BYTES": "100000"}, logs, "api-console-small")
    page, problems = open_page(browser)
    try:
        assert small.url and call_wav.stat().st_size > 100_000
        sign_in(page, small.url, api_key)
        page.goto(f"{small.url}/console#/upload")
        page.set_input_files("#upload-files", str(call_wav))
        box = page.locator("#upload-list .error-box")
        expect(box).to_contain_text("The file is too large: this server accepts uploads up to 0.1 MB.")
        expect(box).to_contain_text("Code: file_too_large")
        shot(page, "07-upload-too-large")
    finally:
        page.context.close()
        small.stop()
    assert not problems, problems


def test_a_failed_job_shows_its_reason_in_words(
    base: str, worker: Proc, api_key: str, page: Page, broken_flac: Path
) -> None:
    job = submit(base, api_key, broken_flac)
    assert wait_final(base, api_key, job["id"])["status"] == "failed"
    sign_in(page, base, api_key)
    page.goto(f"{base}/console#/jobs/{job['id']}")
    expect(page.locator(".status-area .error-box")).to_contain_text("damaged or truncated")
    expect(page.locator(".status-area .error-box")).to_contain_text("Code: corrupt_audio")
    expect(page.locator("#dialogue")).to_have_count(0)
    shot(page, "08-job-failed")
    page.goto(f"{base}/console#/jobs/00000000-0000-0000-0000-000000000000")
    expect(page.locator("main h1")).to_have_text("Job not found")
    expect(page.locator(".error-box")).to_contain_text("Not found")


# -- URL, list, filters, pagination, delete ------------------------------------------------------------


def test_a_url_is_transcribed(
    base: str, worker: Proc, api_key: str, page: Page, mono_wav: Path, tmp_path: Path
) -> None:
    import http.server
    from functools import partial

    from tests.conftest import serving

    shutil.copy(mono_wav, tmp_path / "from-url.wav")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server):
        url = f"http://127.0.0.1:{server.server_port}/from-url.wav"
        sign_in(page, base, api_key)
        page.goto(f"{base}/console#/upload")
        page.fill("#upload-url", url)
        page.click(".url-form button[type=submit]")
        opened = page.locator("#upload-list a", has_text="Open transcript")
        expect(opened).to_be_visible(timeout=SLOW)
        opened.click()
        expect(page.locator("main h1")).to_have_text("from-url.wav")
        expect(page.locator("#dialogue.mono li.phrase .phrase-text")).to_have_text(["да"])
        expect(page.locator(".waveform canvas")).to_have_count(
            1, timeout=30_000
        )  # the downloaded audio plays


def test_the_jobs_list_filters_pages_and_deletes(
    base: str, worker: Proc, servers: dict[str, str], page: Page, mono_wav: Path, broken_flac: Path
) -> None:
    key = make_key(servers, f"console-list-{uuid.uuid4().hex[:6]}")  # a tenant of its own: exact counts
    ids = [submit(base, key, mono_wav)["id"] for _ in range(11)]
    failed = submit(base, key, broken_flac)["id"]
    for job_id in [*ids, failed]:
        wait_final(base, key, job_id)
    sign_in(page, base, key)
    rows = page.locator(".jobs-table tbody tr")
    expect(rows).to_have_count(12)
    page.select_option("#filter-size", "10")
    expect(rows).to_have_count(10)
    expect(page.locator(".page-label")).to_have_text("Page 1")
    shot(page, "09-jobs")
    page.click("#page-next")
    expect(page.locator(".page-label")).to_have_text("Page 2")
    expect(rows).to_have_count(2)
    assert rows.first.get_attribute("data-id") == ids[1]  # newest first: page 2 holds the two oldest
    page.click("#page-prev")
    expect(rows).to_have_count(10)
    assert rows.first.get_attribute("data-id") == failed

    page.select_option("#filter-status", "failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("damaged or truncated")
    page.select_option("#filter-status", "completed")
    expect(page.locator('tr[data-status="failed"]')).to_have_count(0)
    expect(rows).to_have_count(10)
    page.select_option("#filter-status", "")
    expect(rows.first).to_have_attribute("data-id", failed)

    doomed = ids[5]
    target = page.locator(f'tr[data-id="{doomed}"]')
    target.locator("button", has_text="Delete").click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    shot(page, "10-jobs-delete-confirm")
    dialog.locator("button", has_text="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(target).to_have_count(1)
    target.locator("button", has_text="Delete").click()
    page.locator("dialog.confirm button", has_text="Delete").click()
    expect(page.locator(f'tr[data-id="{doomed}"]')).to_have_count(0)
    expect(page.locator("#banner")).to_contain_text("Deleted")
    assert httpx.get(f"{base}/v1/jobs/{doomed}", headers=auth(key)).status_code == 404

    # a narrow screen: the table becomes cards, nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    expect(rows.first).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "11-jobs-narrow")
    # keyboard: from the page's heading, Tab reaches the filters, a job and its Delete button
    reached = set()
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.add(
            page.evaluate("() => document.activeElement.id || document.activeElement.textContent.trim()")
        )
    assert {"filter-status", "filter-size", "Delete"} <= reached, reached
    assert any(name.endswith((".wav", ".flac")) for name in reached), reached


# -- live ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone plays (16-bit PCM WAV at 48 kHz, as a sound card would give)."""
    audio, _ = synthesize(LIVE, lead=1.0, tail=3.0)
    path = tmp_path_factory.mktemp("console-mic") / "mic.wav"
    samples = soxr.resample(audio.astype(np.float32) / 32768, 8000, 48000, quality="HQ")
    sf.write(path, samples, 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def mic_browser(driver: Playwright, mic_wav: Path, shots_folder: Path) -> Iterator[Browser]:
    args = [
        *FLAGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    b = driver.chromium.launch(executable_path=str(CHROMIUM), args=args)
    yield b
    b.close()


def test_live_microphone_phrases_appear_and_the_session_is_kept_as_a_job(
    base: str, worker: Proc, api_key: str, mic_browser: Browser
) -> None:
    page, problems = open_page(mic_browser)
    try:
        sign_in(page, base, api_key)
        page.click("nav a[data-nav=live]")
        expect(page.locator("main h1")).to_have_text("Live")
        page.click("#live-start")
        expect(page.locator("#live-status")).to_have_text("Listening… speak now.", timeout=30_000)
        page.check("#live-keep")  # keeping is decided while the session runs, up to Stop
        # Chromium loops the file: the phrases come again and again, in order
        phrases = page.locator("#live-phrases .phrase-text")
        expect(phrases.first).to_have_text(LIVE[0], timeout=60_000)
        expect(phrases.nth(1)).to_have_text(LIVE[1], timeout=60_000)
        shot(page, "12-live")
        page.click("#live-stop")
        link = page.locator("#live-job-link")
        expect(link).to_be_visible(timeout=60_000)
        texts = phrases.all_inner_texts()
        assert texts[:2] == LIVE and all(t in LIVE for t in texts), texts
        expect(page.locator("#live-status")).to_have_text("Stopped.")
        shot(page, "13-live-stopped")
        job_id = (link.get_attribute("href") or "").rsplit("/", 1)[-1]
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(api_key)).json()
        assert job["kind"] == "stream" and job["status"] == "completed"
        kept = httpx.get(f"{base}/v1/jobs/{job_id}/transcript", headers=auth(api_key)).json()
        assert [p["text"] for p in kept["phrases"]] == texts
        link.click()  # a live session has no recording: the transcript without a player
        expect(page.locator("main h1")).to_have_text("Live session")
        expect(page.locator(".notice")).to_contain_text("kept only its transcript")
        expect(page.locator("#player")).to_have_count(0)
        expect(page.locator("#dialogue li.phrase .phrase-text")).to_have_text(texts)
        shot(page, "14-live-session-job")
    finally:
        page.context.close()
    assert not problems, problems


# -- batches -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_id(base: str, worker: Proc, api_key: str, call_wav: Path, mono_wav: Path, broken_flac: Path) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("calls/a.wav", call_wav.read_bytes())
        zf.writestr("calls/b.wav", mono_wav.read_bytes())
        zf.writestr("calls/broken.flac", broken_flac.read_bytes())
        zf.writestr("calls/notes.txt", b"not audio")
    got = httpx.post(
        f"{base}/v1/batches",
        headers=auth(api_key),
        files={"file": ("calls.zip", buf.getvalue())},
        timeout=60,
    )
    assert got.status_code == 202, got.text
    batch = got.json()["id"]
    wait_batch_done(base, api_key, batch)
    return str(batch)


def test_a_batch_shows_progress_counts_failed_items_and_downloads(
    base: str, api_key: str, page: Page, batch_id: str
) -> None:
    sign_in(page, base, api_key)
    page.goto(f"{base}/console#/batches/{batch_id}")
    expect(page.locator(".batch-summary .badge")).to_have_text("Completed")
    expect(page.locator(".batch-summary .count-completed")).to_have_text("2 completed")
    expect(page.locator(".batch-summary .count-failed")).to_have_text("1 failed")
    items = page.locator(".items-table tbody tr")
    expect(items).to_have_count(3)
    page.check("#only-failed")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("calls/broken.flac")
    expect(items.first).to_contain_text("damaged or truncated")
    shot(page, "15-batch")
    with page.expect_download() as info:
        page.click("button[data-format=csv]")
    api_csv = httpx.get(f"{base}/v1/batches/{batch_id}/results?format=csv", headers=auth(api_key)).content
    assert Path(info.value.path()).read_bytes() == api_csv


def test_the_batches_list_shows_batches_and_takes_an_archive(
    base: str, worker: Proc, api_key: str, page: Page, batch_id: str, mono_wav: Path, tmp_path: Path
) -> None:
    sign_in(page, base, api_key)
    page.click("nav a[data-nav=batches]")
    expect(page.locator("main h1")).to_have_text("Batches")
    row = page.locator(f'.batches-table tr[data-id="{batch_id}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("Completed")
    expect(row.locator(".count-failed")).to_have_text("1 failed")

    archive = tmp_path / "may.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("may/one.wav", mono_wav.read_bytes())
        zf.writestr("may/readme.txt", b"not audio")
    page.set_input_files("#batch-file", str(archive))
    page.fill("#batch-name", "May calls")
    page.click(".batch-form button[type=submit]")
    expect(page.locator(".batch-form .notice")).to_contain_text("Batch created: 1 item in 1 job, 1 skipped")
    created = page.locator(".batches-table tbody tr", has_text="May calls")
    expect(created.locator(".badge")).to_have_text("Completed", timeout=SLOW)  # polled until it ends
    shot(page, "16-batches")
    created.locator("a").click()
    expect(page.locator("main h1")).to_have_text("May calls")
    expect(page.locator(".items-table tbody tr")).to_have_count(1)
    page.click("details.skipped summary")
    expect(page.locator("details.skipped li")).to_contain_text("may/readme.txt")
    shot(page, "17-batch-skipped")

    # delete it: asked first, then gone from the list and from the API
    may = page.url.rsplit("/", 1)[-1]
    page.click("#batch-delete")
    page.locator("dialog.confirm button", has_text="Delete batch").click()
    expect(page.locator("main h1")).to_have_text("Batches")
    expect(page.locator(".batches-table tbody tr", has_text="May calls")).to_have_count(0)
    assert httpx.get(f"{base}/v1/batches/{may}", headers=auth(api_key)).status_code == 404


def test_the_transcript_shows_the_written_form_with_a_toggle_and_upload_takes_the_text_options(
    base: str, worker: Proc, api_key: str, page: Page, tmp_path: Path
) -> None:
    spoken = [
        "оплата двадцать пять тысяч триста рублей",
        "мой номер восемь девятьсот шестнадцать сто двадцать три сорок пять шестьдесят семь",
    ]
    audio, _ = synthesize(spoken)
    path = tmp_path / "numbers.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    sign_in(page, base, api_key)
    page.click("nav a[data-nav=upload]")
    expect(page.locator("#upload-normalize")).to_be_checked()
    page.select_option("#upload-channels", "mix")
    page.check("#upload-redact-phone")
    page.fill("#upload-vocabulary", "Оплата")
    page.set_input_files("#upload-files", str(path))
    opened = page.locator("#upload-list a", has_text="Open transcript")
    expect(opened).to_be_visible(timeout=SLOW)
    opened.click()
    texts = page.locator("#dialogue li.phrase .phrase-text")
    expect(texts).to_have_text(["Оплата 25 300 рублей", "мой номер [телефон]"])
    shot(page, "05c-transcript-display")
    # a written span is one word that seeks to the first of the words it replaced
    expect(page.locator("#dialogue li.phrase").first.locator(".word")).to_have_text(
        ["Оплата", "25 300", "рублей"]
    )
    page.check("#spoken-words")
    expect(texts).to_have_text(spoken)
    page.uncheck("#spoken-words")
    expect(texts.first).to_have_text("Оплата 25 300 рублей")
    job_id = page.url.rsplit("/", 1)[-1]
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(api_key)).json()
    assert job["options"]["redact"] == ["phone"] and job["options"]["vocabulary"] == ["Оплата"]
    assert "normalize" not in job["options"]  # the default


# -- what a supervisor tripped over (issue 15) ----------------------------------------------------------


def test_uploads_are_followed_in_one_list_request_and_the_transcript_says_what_the_file_is(
    base: str, worker: Proc, api_key: str, page: Page, mono_wav: Path, call_wav: Path
) -> None:
    """The upload page follows every open job with one GET /v1/jobs?id=…&id=… (never a request per
    job); a mono file uploaded with "split" is shown as mono; the duration is truncated as the
    player's clock is; the job's metadata is on its page and, ticked, a column of the list."""
    per_job: list[str] = []
    listed: list[str] = []
    job_path = re.compile(r"/v1/jobs/[0-9a-f-]{36}$")
    page.on("request", lambda r: per_job.append(r.url) if job_path.search(urlsplit(r.url).path) else None)
    page.on("request", lambda r: listed.append(r.url) if "/v1/jobs?" in r.url and "id=" in r.url else None)
    sign_in(page, base, api_key)
    page.click("nav a[data-nav=upload]")
    page.select_option("#upload-channels", "split")
    # the worker holds still until a poll has seen both jobs open (else a fast first job can end
    # before the second upload is answered, and no poll ever follows two)
    os.killpg(worker.popen.pid, signal.SIGSTOP)
    try:
        page.set_input_files("#upload-files", [str(mono_wav), str(call_wav)])
        deadline = time.monotonic() + 30
        while not any(u.count("id=") == 2 for u in listed) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
    finally:
        os.killpg(worker.popen.pid, signal.SIGCONT)
    expect(page.locator("#upload-list .badge-completed")).to_have_count(2, timeout=SLOW)
    assert listed and per_job == [], per_job  # one list request per poll, none per job
    assert any(u.count("id=") == 2 for u in listed), listed

    job = submit(
        base, api_key, mono_wav, channels="split", metadata=json.dumps({"operator": "Петрова", "queue": 3})
    )
    done = wait_final(base, api_key, job["id"])
    assert done["audio"]["channels"] == 1
    page.goto(f"{base}/console#/jobs/{job['id']}")
    meta = page.locator("dl.meta").first
    expect(meta).to_contain_text("Mono")
    expect(meta).not_to_contain_text("Stereo")
    duration = done["duration"]
    shown = f"{int(duration * 10) / 10:.1f} s" if duration < 10 else f"{int(duration)} s"
    expect(meta).to_contain_text(shown)
    expect(page.locator("#job-metadata")).to_contain_text("operator")
    expect(page.locator("#job-metadata")).to_contain_text("Петрова")
    shot(page, "20-transcript-metadata")

    page.goto(f"{base}/console#/jobs")
    page.locator("#meta-columns summary").click()
    page.check("#meta-col-operator")
    expect(page.locator(".jobs-table thead")).to_contain_text("operator")
    expect(page.locator(f'.jobs-table tr[data-id="{job["id"]}"]')).to_contain_text("Петрова")
    shot(page, "21-jobs-metadata-column")


def test_with_auth_disabled_the_console_asks_no_key_and_says_so(
    platform_env: dict[str, str], logs: Path, browser: Browser
) -> None:
    open_api = start_api({**platform_env, "TONE_AUTH_DISABLED": "1"}, logs, "api-console-auth-off")
    page, problems = open_page(browser)
    try:
        page.goto(f"{open_api.url}/console")
        expect(page.locator("main h1")).to_have_text("Jobs")
        expect(page.locator("#auth-off")).to_be_visible()
        expect(page.locator("#signout")).to_be_hidden()
        shot(page, "22-auth-disabled")
    finally:
        page.context.close()
        open_api.stop()
    assert not problems, problems


def test_a_russian_browser_gets_the_russian_console_and_can_switch_to_english(
    base: str, api_key: str, browser: Browser, mono_wav: Path, worker: Proc
) -> None:
    """Russian for a browser whose first language is Russian (dates, numbers and units too), English
    a click away and kept; with an English browser nothing changes (every other test)."""
    job = submit(base, api_key, mono_wav, metadata=json.dumps({"очередь": "входящие"}))
    done = wait_final(base, api_key, job["id"])
    context = browser.new_context(locale="ru-RU", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    try:
        page.goto(f"{base}/console")
        expect(page.locator("main h1")).to_have_text("Войти")
        assert page.evaluate("() => document.documentElement.lang") == "ru"
        expect(page.locator("footer")).to_contain_text("Справочник API")
        page.fill("#api-key", "tone_nope_not-a-key")
        page.click("form.signin button[type=submit]")
        expect(page.locator(".error-box")).to_contain_text("Этот ключ API не принят")
        expect(page.locator(".error-box")).to_contain_text("Код: unauthorized")
        page.fill("#api-key", api_key)
        page.click("form.signin button[type=submit]")
        expect(page.locator("main h1")).to_have_text("Задания")
        expect(page.locator("nav a[data-nav=upload]")).to_have_text("Загрузка")
        expect(page.locator(".jobs-table thead")).to_contain_text("Длительность")
        page.goto(f"{base}/console#/search")  # its labels and the summary written by textContent
        expect(page.locator("main h1")).to_have_text("Поиск")
        expect(page.locator("label[for=search-channel]")).to_have_text("Кто говорит")
        page.fill("#search-q", "абракадабра")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#search-summary")).to_have_text("Ничего не найдено.")
        page.goto(f"{base}/console#/jobs/{job['id']}")
        meta = page.locator("dl.meta").first
        expect(meta).to_contain_text("Моно")
        expect(meta).to_contain_text(f"{int(done['duration'] * 10) / 10:.1f} с".replace(".", ","))
        expect(page.locator("#job-metadata")).to_contain_text("входящие")
        expect(page.locator(".badge-completed")).to_have_text("Готово")
        expect(page.locator("#analytics")).to_contain_text("у монозаписи нет показателей по сторонам")
        shot(page, "23-russian-transcript")
        page.click("#lang")
        expect(page.locator("dl.meta").first).to_contain_text("Mono")
        assert page.evaluate("() => document.documentElement.lang") == "en"
        page.reload()
        expect(page.locator("nav a[data-nav=upload]")).to_have_text("Upload")  # the choice is kept
    finally:
        context.close()
    assert not problems, problems
