"""The web console in real headless Firefox (Debian's ``firefox-esr``, driven over Marionette, its own
remote protocol: no geckodriver, no downloaded browser) against the real stack. The same things a
person does as in the Chromium tests, fewer of them: sign in, upload, the dialogue, seeking, search,
the microphone (Firefox's fake device) streaming over the WebSocket and kept as a job.

Screenshots go to ``test-output/console-firefox/``. Every page fails the test on an uncaught error or
a Content-Security-Policy violation (collected in the page).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
from marionette_driver import By
from marionette_driver.marionette import Marionette

from tests.conftest import CALL_CLIENT, ROOT, Proc, free_port, wait_for
from tests.console.test_console import auth

FIREFOX = Path("/usr/bin/firefox-esr")
PULSEAUDIO = "/usr/bin/pulseaudio"
SHOTS = ROOT / "test-output" / "console-firefox"
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "media.navigator.permission.disabled": True,  # no prompt for the microphone ...
    "media.navigator.streams.fake": True,  # ... and a fake one (a tone)
}
WATCH = """
window.__problems = [];
window.addEventListener("error", (e) => window.__problems.push("uncaught: " + e.message));
window.addEventListener("unhandledrejection", (e) => window.__problems.push("unhandled: " + e.reason));
document.addEventListener("securitypolicyviolation",
  (e) => window.__problems.push("csp: " + e.violatedDirective));
"""


@pytest.fixture(scope="module")
def firefox() -> Iterator[Marionette]:
    assert FIREFOX.is_file(), "Debian's firefox-esr is missing: `make browser` installs it"
    assert Path(PULSEAUDIO).is_file(), "Debian's pulseaudio is missing: `make browser` installs it"
    profile = Path(tempfile.mkdtemp(prefix="tone-firefox-"))
    port = free_port()
    prefs = {**PREFS, "marionette.port": port}
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    # Firefox runs Web Audio only with an audio output: a PulseAudio server with a null sink, its own
    pulse = profile / "pulse"
    pulse.mkdir()
    env = {
        **os.environ,
        "HOME": str(profile),
        "XDG_RUNTIME_DIR": str(pulse),
        "PULSE_RUNTIME_PATH": str(pulse),
    }
    sound = [PULSEAUDIO, "--daemonize=no", "--exit-idle-time=-1", "-n",
             "--load=module-null-sink sink_name=null",
             f"--load=module-native-protocol-unix socket={pulse}/native auth-anonymous=1"]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            sound,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))  # fmt: skip
        wait_for(lambda: (pulse / "native").exists(), "the PulseAudio server", timeout=30)
        procs.insert(0, subprocess.Popen(
            [str(FIREFOX), "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
            env={**env, "PULSE_SERVER": f"unix:{pulse}/native"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))  # fmt: skip
        wait_for(lambda: bool(socket.create_connection(("127.0.0.1", port), 1).close() or True),
                 "Firefox's Marionette port", timeout=60)  # fmt: skip
        m = Marionette(host="127.0.0.1", port=port)
        m.start_session()
        m.set_window_rect(width=1280, height=900)
        if SHOTS.exists():
            shutil.rmtree(SHOTS)
        SHOTS.mkdir(parents=True)
        try:
            yield m
        finally:
            m.delete_session()
    finally:
        for proc in procs:  # Firefox first, then its sound server; their whole process groups
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def js(m: Marionette, script: str, *args: Any) -> Any:
    """Run ``script`` in the page itself (not a sandbox), with ``arguments``."""
    return m.execute_script(script, script_args=list(args), sandbox=None)


def until(m: Marionette, check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            shot(m, f"timeout-{what.replace(' ', '-')[:40]}")
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


def text(m: Marionette, css: str) -> str:
    return str(js(m, "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css))


def shot(m: Marionette, name: str) -> None:
    (SHOTS / f"{name}.png").write_bytes(m.screenshot(format="binary", full=True))


def problems(m: Marionette) -> list[str]:
    return list(js(m, "return window.__problems || [];"))


def open_console(m: Marionette, base: str) -> None:
    m.navigate(f"{base}/console")
    until(m, lambda: text(m, "main h1") in ("Sign in", "Jobs"), "the console")
    js(m, WATCH)


def sign_in(m: Marionette, base: str, key: str) -> None:
    open_console(m, base)
    if text(m, "main h1") == "Jobs":
        return
    field = m.find_element(By.CSS_SELECTOR, "#api-key")
    field.clear()
    field.send_keys(key)
    m.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    until(m, lambda: text(m, "main h1") == "Jobs", "the jobs page")


def test_firefox_signs_in_uploads_and_plays_the_dialogue(
    firefox: Marionette,
    api: Proc,
    worker: Proc,
    api_key: str,
    call_wav: Path,
    call_phrases: list[dict[str, Any]],
) -> None:
    m, base = firefox, str(api.url)
    open_console(m, base)
    js(m, "sessionStorage.clear();")
    open_console(m, base)
    assert text(m, "main h1") == "Sign in"
    m.find_element(By.CSS_SELECTOR, "#api-key").send_keys("tone_nope_not-a-key")
    m.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    until(m, lambda: "This API key was not accepted" in text(m, ".error-box"), "the bad key's error")
    shot(m, "01-sign-in-bad-key")
    sign_in(m, base, api_key)
    assert api_key not in m.get_url()

    m.find_element(By.CSS_SELECTOR, "nav a[data-nav=upload]").click()
    until(m, lambda: text(m, "main h1") == "Upload", "the upload page")
    js(m, "const s = document.getElementById('upload-channels'); s.value = 'split';"
          " s.dispatchEvent(new Event('change', {bubbles: true}));")  # fmt: skip
    m.find_element(By.CSS_SELECTOR, "#upload-files").send_keys(str(call_wav))
    until(m, lambda: js(m, "return document.querySelectorAll('#upload-list .badge-completed').length") == 1,
          "the job completed", timeout=120)  # fmt: skip
    shot(m, "02-upload")
    m.find_element(By.PARTIAL_LINK_TEXT, "Open transcript").click()

    until(m, lambda: text(m, "main h1") == call_wav.name, "the transcript page")
    rows = until(
        m,
        lambda: (
            js(
                m,
                "return [...document.querySelectorAll('#dialogue.split > li.phrase')]"
                ".map(e => [+e.dataset.channel, e.querySelector('.phrase-text').textContent]);",
            )
            or None
        ),
        "the dialogue",
    )
    assert [tuple(r) for r in rows] == [(p["channel"], p["text"]) for p in call_phrases]
    until(
        m, lambda: js(m, "return document.querySelectorAll('.waveform canvas').length") == 1, "the waveform"
    )
    until(m, lambda: js(m, "return document.getElementById('player').readyState") >= 1, "the player")
    duration = js(m, "return document.getElementById('player').duration;")
    assert duration == pytest.approx(sf.info(call_wav).duration, abs=0.05)
    shot(m, "03-transcript")

    second = call_phrases[1]
    m.find_elements(By.CSS_SELECTOR, "#dialogue li.phrase button.time")[1].click()
    now = js(m, "const a = document.getElementById('player'); a.pause(); return a.currentTime;")
    assert second["start_time"] - 0.01 <= now < second["end_time"], (now, second)
    active = "return [...document.querySelectorAll('li.phrase.active')].map(e => +e.dataset.index)"
    until(m, lambda: js(m, active) == [1], "the played phrase highlighted")

    search = m.find_element(By.CSS_SELECTOR, "#transcript-search")
    search.send_keys(CALL_CLIENT[0].split()[-1].upper())
    until(m, lambda: text(m, "#search-count") == "1 match", "the search")
    assert js(m, "return [...document.querySelectorAll('#dialogue mark')].map(e => e.textContent)") == [
        "дела"
    ]
    shot(m, "04-transcript-search")
    assert problems(m) == []


def test_firefox_streams_the_microphone_and_keeps_the_session(
    firefox: Marionette, api: Proc, worker: Proc, api_key: str
) -> None:
    m, base = firefox, str(api.url)
    sign_in(m, base, api_key)
    m.find_element(By.CSS_SELECTOR, "nav a[data-nav=live]").click()
    until(m, lambda: text(m, "main h1") == "Live", "the live page")
    m.find_element(By.CSS_SELECTOR, "#live-start").click()
    until(m, lambda: text(m, "#live-status") == "Listening… speak now.", "listening", timeout=30)
    m.find_element(By.CSS_SELECTOR, "#live-keep").click()  # decided while the session runs
    time.sleep(3)  # Firefox's fake microphone (a tone) streams for a while
    shot(m, "05-live")
    m.find_element(By.CSS_SELECTOR, "#live-stop").click()
    until(m, lambda: text(m, "#live-status") == "Stopped.", "stopped", timeout=60)
    link = "const a = document.getElementById('live-job-link'); return a && a.getAttribute('href');"
    href = until(m, lambda: js(m, link), "the kept job's link")
    shot(m, "06-live-stopped")
    job = httpx.get(f"{base}/v1/jobs/{href.rsplit('/', 1)[-1]}", headers=auth(api_key)).json()
    assert job["kind"] == "stream" and job["status"] == "completed", job
    assert job["duration"] and job["duration"] >= 2.0, job  # the audio really went over the WebSocket
    assert problems(m) == []


def test_firefox_searches_the_archive_and_opens_the_call_at_the_hit(
    firefox: Marionette, api: Proc, worker: Proc, servers: dict[str, str], call_wav: Path
) -> None:
    """The Search page in Firefox: a stemmed hit, its word marked, opening the call at that phrase."""
    import uuid

    from tests.conftest import make_key
    from tests.console.test_console import submit, wait_final

    m, base = firefox, str(api.url)
    key = make_key(servers, f"firefox-search-{uuid.uuid4().hex[:6]}")  # its own archive: one call
    job = submit(base, key, call_wav, channels="split")
    assert wait_final(base, key, job["id"])["status"] == "completed"
    open_console(m, base)
    js(m, "sessionStorage.clear();")
    sign_in(m, base, key)
    m.find_element(By.CSS_SELECTOR, "nav a[data-nav=search]").click()
    until(m, lambda: text(m, "main h1") == "Search", "the search page")
    m.find_element(By.CSS_SELECTOR, "#search-q").send_keys("дело")  # «дела» by its stem
    m.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    hits = (
        "return [...document.querySelectorAll('#hits > li.hit')]"
        ".map(e => e.querySelector('.hit-text').textContent)"
    )
    until(m, lambda: js(m, hits) == [CALL_CLIENT[0]], "the hit")
    assert js(m, "return [...document.querySelectorAll('#hits mark')].map(e => e.textContent)") == ["дела"]
    shot(m, "05-search")
    start = float(js(m, "return document.querySelector('#hits > li.hit').dataset.start"))
    m.find_element(By.CSS_SELECTOR, "#hits a.hit-link").click()
    until(m, lambda: text(m, "main h1") == call_wav.name, "the transcript page")
    until(m, lambda: CALL_CLIENT[0] in text(m, "li.phrase.from-search"), "the hit's phrase marked")
    until(m, lambda: js(m, "return document.getElementById('player').currentTime") >= start - 0.05,
          "the player at the phrase")  # fmt: skip
    until(m, lambda: js(m, "return document.querySelectorAll('#analytics .share-bar .share').length") == 2,
          "the talk share bar")  # fmt: skip
    shot(m, "06-transcript-from-search")
    assert problems(m) == []
