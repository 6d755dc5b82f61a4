"""The written form over the real stack: ``display`` in the transcript, the exports and the OpenAI
route, ``normalize``, bad options, and redaction leaving nothing unredacted in the database, the
audio store, the logs or the webhook payloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import text

from shared.asr.engine import Recognizer
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from tests.api.test_api import assert_error, auth, submit, wait_final
from tests.conftest import Proc, serving, start_api, start_worker, wait_for
from tests.worker.test_webhooks import Receiver

pytestmark = pytest.mark.platform

SPOKEN = [
    "номер договора двадцать три сорок пять",
    "оплата двадцать пять тысяч триста рублей",
]
DIGITS = "четыре один один один один один один один один один один один один один один один"
CARD = "4111111111111111"
SECRET_PHRASES = ["моя карта " + DIGITS, "да иди ты нахуй", "спасибо до свидания"]


def write_wav(path: Path, phrases: list[str]) -> Path:
    audio, _ = synthesize(phrases)
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def numbers_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("text") / "numbers.wav", SPOKEN)


@pytest.fixture(scope="module")
def secret_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("text") / "secret.wav", SECRET_PHRASES)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    with serving(server):
        yield server


def done(api: Proc, key: str, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job = wait_final(api.url, key, response.json()["id"])
    assert job["status"] == "completed", job
    return job


def transcript(api: Proc, key: str, job_id: str, **params: str) -> httpx.Response:
    r = httpx.get(f"{api.url}/v1/jobs/{job_id}/transcript", params=params, headers=auth(key), timeout=30)
    assert r.status_code == 200, r.text
    return r


def test_display_in_the_transcript_and_every_export(
    api: Proc, worker: Proc, api_key: str, numbers_wav: Path
) -> None:
    job = done(api, api_key, submit(api.url, api_key, numbers_wav))
    doc = transcript(api, api_key, job["id"]).json()
    first, second = doc["phrases"]
    assert [p["text"] for p in doc["phrases"]] == SPOKEN  # the recognizer's words, untouched
    assert first["display"] == "номер договора 2345"
    assert second["display"] == "оплата 25 300 рублей"
    assert doc["display_text"] == "номер договора 2345 оплата 25 300 рублей"
    assert doc["full_text"] == " ".join(SPOKEN)
    # a span that replaced several spoken words starts at the first and ends at the last of them
    words = first["words"]
    assert first["display_words"][2] == {"text": "2345", "start": words[2]["start"], "end": words[5]["end"]}
    assert [w["text"] for w in second["display_words"]] == ["оплата", "25 300", "рублей"]

    txt = transcript(api, api_key, job["id"], format="txt").text
    assert txt == "номер договора 2345\nоплата 25 300 рублей\n"
    assert transcript(api, api_key, job["id"], format="txt", text="raw").text == "\n".join(SPOKEN) + "\n"
    srt = transcript(api, api_key, job["id"], format="srt").text
    assert "оплата 25 300 рублей" in srt and "двадцать" not in srt
    assert "двадцать пять тысяч" in transcript(api, api_key, job["id"], format="vtt", text="raw").text
    assert "\t2345" not in transcript(api, api_key, job["id"], format="tsv").text  # phrases, not words
    assert "номер договора 2345" in transcript(api, api_key, job["id"], format="tsv").text
    bad = httpx.get(
        f"{api.url}/v1/jobs/{job['id']}/transcript", params={"text": "fancy"}, headers=auth(api_key)
    )
    assert bad.status_code == 422


def test_normalize_false_keeps_the_spoken_words(
    api: Proc, worker: Proc, api_key: str, numbers_wav: Path
) -> None:
    job = done(api, api_key, submit(api.url, api_key, numbers_wav, normalize="false"))
    assert job["options"]["normalize"] is False
    doc = transcript(api, api_key, job["id"]).json()
    assert [p["display"] for p in doc["phrases"]] == SPOKEN
    assert doc["display_text"] == doc["full_text"]


def test_replacements_rewrite_display(api: Proc, worker: Proc, api_key: str, numbers_wav: Path) -> None:
    response = submit(api.url, api_key, numbers_wav, replacements={"договора": "Договора"})
    doc = transcript(api, api_key, done(api, api_key, response)["id"]).json()
    assert doc["phrases"][0]["display"] == "номер Договора 2345"


def test_openai_route_answers_the_written_form(
    api: Proc, worker: Proc, api_key: str, numbers_wav: Path
) -> None:
    with numbers_wav.open("rb") as f:
        r = httpx.post(
            f"{api.url}/v1/audio/transcriptions",
            headers=auth(api_key),
            files={"file": ("numbers.wav", f, "audio/wav")},
            data={
                "model": "t-one",
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["segment", "word"],
            },
            timeout=60,
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "номер договора 2345 оплата 25 300 рублей"
    assert [s["text"] for s in body["segments"]] == ["номер договора 2345", "оплата 25 300 рублей"]
    assert "25 300" in [w["word"] for w in body["words"]]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"normalize": "perhaps"}, "invalid_normalize"),
        ({"redact": "card,dna"}, "invalid_redact"),
        ({"replacements": "[1]"}, "invalid_replacements"),
        ({"vocabulary": "[1, 2]"}, "invalid_vocabulary"),
        ({"redact_audio": "true"}, "invalid_redact_audio"),
    ],
)
def test_bad_text_options_are_422_naming_the_option(
    api: Proc, api_key: str, numbers_wav: Path, fields: dict[str, str], code: str
) -> None:
    assert_error(submit(api.url, api_key, numbers_wav, **fields), 422, code)


def test_bad_text_options_in_a_json_body(api: Proc, api_key: str) -> None:
    r = httpx.post(
        f"{api.url}/v1/jobs",
        headers=auth(api_key),
        json={"audio_url": "https://example.com/a.wav", "redact": ["card", 5]},
    )
    assert_error(r, 422, "invalid_redact")


def _all_rows(database_url: str) -> str:
    """Every row of every table of the public schema, as text."""
    with session_scope(database_url) as session:
        tables = list(
            session.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
        )
        assert {"jobs", "transcripts"} <= set(tables)
        return "\n".join(
            str(row[0]) for t in tables for row in session.execute(text(f'SELECT "{t}"::text FROM "{t}"'))
        )


def test_redaction_leaves_nothing_unredacted_anywhere(
    api: Proc,
    worker: Proc,
    api_key: str,
    secret_wav: Path,
    servers: dict[str, str],
    logs: Path,
    receiver: Receiver,
    tone_model: Path,
) -> None:
    hook = receiver.script((200, {}))
    response = submit(
        api.url,
        api_key,
        secret_wav,
        redact="card,phone,profanity",
        redact_raw="true",
        redact_audio="true",
        webhook_url=hook,
    )
    job = done(api, api_key, response)
    doc = transcript(api, api_key, job["id"]).json()
    assert [p["display"] for p in doc["phrases"]] == [
        "моя карта [карта]",
        "да иди ты [мат]",
        "спасибо до свидания",
    ]
    assert [p["text"] for p in doc["phrases"]] == [
        "моя карта [карта]",
        "да иди ты [мат]",
        "спасибо до свидания",
    ]
    card_word = doc["phrases"][0]["words"][2]
    assert card_word["text"] == "[карта]" and card_word["end"] > card_word["start"]

    forbidden = [CARD, DIGITS, "один один один", "нахуй"]
    rows = _all_rows(servers["DATABASE_URL"])
    assert job["id"] in rows  # the search does see this job's rows
    for secret in forbidden:
        assert secret not in rows, secret

    # the audio store holds only the redacted recording, a 1 kHz tone where the words were
    root = Path(servers["root"]) / "data"
    stored = [p for p in root.rglob("*") if p.is_file() and job["id"] in p.name]
    assert [p.name for p in stored] == [f"{job['id']}.redacted.wav"], stored
    for path in root.rglob("*"):
        if path.is_file() and path.suffix not in (".wav",):
            content = path.read_bytes()
            for secret in forbidden:
                assert secret.encode() not in content, (path, secret)
    played = httpx.get(f"{api.url}/v1/jobs/{job['id']}/audio", headers=auth(api_key), timeout=30)
    assert played.status_code == 200
    out = Path(servers["root"]) / f"played-{job['id']}.wav"
    out.write_bytes(played.content)
    audio, rate = sf.read(out, dtype="float64")
    assert rate == 8000
    a, b = int(card_word["start"] * rate), int(card_word["end"] * rate)
    spectrum = np.abs(np.fft.rfft(audio[a:b]))
    assert abs(np.argmax(spectrum) * rate / (b - a) - 1000) < 10
    heard = Recognizer.load(tone_model, threads=1).transcribe_file(out).full_text
    assert "один один" not in heard and "нахуй" not in heard and "спасибо до свидания" in heard

    # the logs and the webhook payloads
    for log in logs.rglob("*"):
        if log.is_file():
            content = log.read_text(errors="replace")
            for secret in forbidden:
                assert secret not in content, (log, secret)
    wait_for(lambda: bool(receiver.requests(hook)), "the job.completed webhook", worker)
    (delivery,) = receiver.requests(hook)
    payload = delivery["body"].decode()
    assert json.loads(payload)["data"]["id"] == job["id"]
    for secret in forbidden:
        assert secret not in payload


@pytest.fixture(scope="module")
def leaning_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engine.test_hotwords import leaning_to_mir

    path = tmp_path_factory.mktemp("text") / "leaning.wav"
    sf.write(path, leaning_to_mir(), 8000, subtype="PCM_16")
    return path


def test_vocabulary_boosts_a_word_per_job_and_does_not_leak_in_the_same_worker_batch(
    platform_env: dict[str, str], logs: Path, api_key: str, leaning_wav: Path
) -> None:
    queue = "vocabulary-batch"
    env = {**platform_env, "TONE_WORKER_QUEUE": queue}
    api = start_api(env, logs, "api-vocabulary")
    worker = None
    try:
        # queued while no worker reads the queue, so that one worker claims them as one batch
        listed = submit(api.url, api_key, leaning_wav, vocabulary='["Мар"]')
        plain = submit(api.url, api_key, leaning_wav)
        worker = start_worker(env, logs, name="vocabulary", queues=queue)
        listed_doc = transcript(api, api_key, done(api, api_key, listed)["id"]).json()
        plain_doc = transcript(api, api_key, done(api, api_key, plain)["id"]).json()
        batches = [line for line in worker.log.read_text().splitlines() if "batch of 2 jobs" in line]
        assert any(listed.json()["id"] in line and plain.json()["id"] in line for line in batches), batches
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
    assert listed_doc["full_text"] == "мар"
    assert listed_doc["display_text"] == "Мар"  # written as the vocabulary lists it
    assert plain_doc["full_text"] == "мир" and plain_doc["display_text"] == "мир"


def test_vocabulary_with_greedy_decoding_is_refused(api: Proc, api_key: str, leaning_wav: Path) -> None:
    assert_error(
        submit(api.url, api_key, leaning_wav, vocabulary="мар", decoder="greedy"), 422, "invalid_vocabulary"
    )


def test_a_batch_carries_the_text_options_to_its_jobs_and_results(
    api: Proc, worker: Proc, api_key: str, numbers_wav: Path
) -> None:
    from tests.api.test_batches import archive_bytes, post_batch, wait_batch_done

    data = archive_bytes({"a/numbers.wav": numbers_wav.read_bytes()})
    bad = post_batch(api.url, api_key, data, redact="dna")
    assert_error(bad, 422, "invalid_redact")
    r = post_batch(api.url, api_key, data, channels="mix", replacements='{"оплата": "Оплата"}')
    assert r.status_code == 202, r.text
    batch = r.json()["id"]
    wait_batch_done(api.url, api_key, batch)
    base = f"{api.url}/v1/batches/{batch}/results"
    (line,) = httpx.get(base, params={"format": "jsonl"}, headers=auth(api_key)).text.splitlines()
    rec = json.loads(line)
    assert [p["display"] for p in rec["phrases"]] == ["номер договора 2345", "Оплата 25 300 рублей"]
    csv_text = httpx.get(base, params={"format": "csv"}, headers=auth(api_key)).text
    assert "Оплата 25 300 рублей" in csv_text and "двадцать" not in csv_text


def test_the_tenants_default_vocabulary_reaches_its_jobs_only(
    api: Proc, worker: Proc, api_key: str, other_key: str, leaning_wav: Path
) -> None:
    url = f"{api.url}/v1/vocabulary"
    assert httpx.get(url, headers=auth(api_key)).json() == {
        "words": [],
        "replacements": {},
        "updated_at": None,
    }
    assert_error(httpx.put(url, headers=auth(api_key), json={"words": [3]}), 422, "invalid_vocabulary")
    assert_error(
        httpx.put(url, headers=auth(api_key), json={"replacements": []}), 422, "invalid_replacements"
    )
    put = httpx.put(url, headers=auth(api_key), json={"words": ["Мар"], "replacements": {"мир": "Мир"}})
    assert put.status_code == 200, put.text
    assert put.json()["words"] == ["Мар"] and put.json()["updated_at"]
    assert httpx.get(url, headers=auth(other_key)).json()["words"] == []
    try:
        mine = transcript(
            api, api_key, done(api, api_key, submit(api.url, api_key, leaning_wav))["id"]
        ).json()
        theirs = transcript(
            api, other_key, done(api, other_key, submit(api.url, other_key, leaning_wav))["id"]
        ).json()
        assert (mine["full_text"], mine["display_text"]) == ("мар", "Мар")
        assert (theirs["full_text"], theirs["display_text"]) == ("мир", "мир")
        # a live session of the tenant gets its vocabulary too
        from websockets.sync.client import connect

        from tests.api.test_websocket import messages

        audio, _ = sf.read(leaning_wav, dtype="int16")
        ws_url = api.url.replace("http://", "ws://") + "/v1/stream"
        with connect(ws_url, additional_headers=auth(api_key)) as ws:
            ws.send(json.dumps({}))
            ws.send(audio.astype("<i2").tobytes())
            ws.send(json.dumps({"type": "end"}))
            final = list(messages(ws))[-1]
        assert final["type"] == "final", final
        assert [(p["text"], p["display"]) for p in final["phrases"]] == [("мар", "Мар")], final
    finally:
        assert httpx.delete(url, headers=auth(api_key)).status_code == 204
    assert httpx.get(url, headers=auth(api_key)).json()["words"] == []


def test_redact_audio_never_touches_a_server_folders_file(
    platform_env: dict[str, str], logs: Path, worker: Proc, api_key: str, secret_wav: Path, tmp_path: Path
) -> None:
    from tests.api.test_batches import wait_batch_done

    root = tmp_path / "batch-root"
    (root / "calls").mkdir(parents=True)
    original = root / "calls" / "secret.wav"
    original.write_bytes(secret_wav.read_bytes())
    before = original.read_bytes()
    api = start_api({**platform_env, "TONE_BATCH_ROOT": str(root)}, logs, "api-text-root")
    try:
        body = {"directory": "calls", "channels": "mix", "redact": ["card"], "redact_audio": True}
        r = httpx.post(f"{api.url}/v1/batches", headers=auth(api_key), json=body, timeout=30)
        assert r.status_code == 202, r.text
        wait_batch_done(api.url, api_key, r.json()["id"])
        items = httpx.get(f"{api.url}/v1/batches/{r.json()['id']}/items", headers=auth(api_key)).json()
        (item,) = items["items"]
        job_id = item["job_id"]
        assert original.read_bytes() == before  # the customer's file is never changed nor removed
        assert sorted(p.name for p in root.rglob("*")) == ["calls", "secret.wav"]
        doc = transcript(api, api_key, job_id).json()
        assert doc["phrases"][0]["display"] == "моя карта [карта]"
        played = httpx.get(f"{api.url}/v1/jobs/{job_id}/audio", headers=auth(api_key), timeout=30)
        assert played.status_code == 200 and played.content != before
    finally:
        api.stop()
