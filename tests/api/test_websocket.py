"""Live streaming over WebSocket (``/v1/stream``, T-one's ``/api/ws``, Vosk's ``/vosk``) against the
real stack: uvicorn, Redis and a Celery worker of this module's own queue, with a real WebSocket
client. The phrases must equal the offline transcript of the same audio, whatever the frame sizes.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from shared.asr.engine import Recognizer
from shared.dev.models.tones import synthesize
from shared.queue import all_queues
from tests.conftest import Proc, start_api, start_worker, written

QUEUE = "ws-tests"
PHRASES = ["привет мир", "как дела", "до свидания"]


@pytest.fixture(scope="module")
def ws_env(platform_env: dict[str, str]) -> dict[str, str]:
    return {**platform_env, "TONE_WORKER_QUEUE": QUEUE, "TONE_STREAM_CHUNK_TIMEOUT_SECONDS": "20"}


@pytest.fixture(scope="module")
def ws_worker(ws_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_worker(ws_env, logs, "ws-worker", queues=all_queues(QUEUE))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ws_api(ws_env: dict[str, str], logs: Path, ws_worker: Proc) -> Iterator[str]:
    proc = start_api(ws_env, logs, "ws-api")
    yield (proc.url or "").replace("http://", "ws://")
    proc.stop()


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return synthesize(PHRASES)[0]


@pytest.fixture(scope="module")
def expected(tone_model: Path, audio: np.ndarray) -> list[dict[str, Any]]:
    phrases = Recognizer.load(tone_model, threads=1).transcribe_file(audio).to_dict()["phrases"]
    assert [p["text"] for p in phrases] == PHRASES
    return written(phrases)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def odd_frames(data: bytes, seed: int = 5) -> list[bytes]:
    """Byte frames of odd sizes (split samples included): 1 byte, 3 bytes, then up to 1.2 s."""
    rng = np.random.default_rng(seed)
    sizes = [1, 3, 7001]
    frames, pos = [], 0
    while pos < len(data):
        size = sizes.pop(0) if sizes else int(rng.integers(1, 19200))
        frames.append(data[pos : pos + size])
        pos += size
    return frames


def messages(ws: ClientConnection, timeout: float = 30) -> Iterator[dict[str, Any]]:
    """Every JSON message until the server closes."""
    while True:
        try:
            raw = ws.recv(timeout=timeout)
        except ConnectionClosed:
            return
        yield json.loads(raw)


def close_code(ws: ClientConnection) -> int | None:
    return ws.close_code


def test_v1_stream_in_odd_frames_gives_the_offline_phrases_and_partials(
    ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]
) -> None:
    pcm = audio.astype("<i2").tobytes()
    config = {"sample_rate": 8000, "encoding": "pcm_s16le", "channels": 1, "decoder": "greedy"}
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps(config))
        got: list[dict[str, Any]] = []
        for frame in odd_frames(pcm):
            ws.send(frame)
            try:  # what has arrived so far, without waiting
                while True:
                    got.append(json.loads(ws.recv(timeout=0.01)))
            except TimeoutError:
                pass
        ws.send(json.dumps({"type": "end"}))
        got += list(messages(ws))
        assert close_code(ws) == 1000
    phrases = [{k: v for k, v in m.items() if k != "type"} for m in got if m["type"] == "phrase"]
    assert phrases == expected
    assert got[-1] == {"type": "final", "phrases": expected}
    partials = [m for m in got if m["type"] == "partial"]
    assert any(m["text"] for m in partials), partials
    assert all(m["channel"] == 0 for m in partials)
    first_phrase = next(i for i, m in enumerate(got) if m["type"] == "phrase")
    assert any(m["type"] == "partial" and m["text"] for m in got[:first_phrase])  # before the phrase closed
    assert {m["type"] for m in got} == {"phrase", "partial", "final"}


def test_v1_stream_browser_key_in_the_first_message_and_mulaw(
    ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]
) -> None:

    out = io.BytesIO()
    sf.write(out, audio, 8000, format="RAW", subtype="ULAW")
    with connect(f"{ws_api}/v1/stream") as ws:
        ws.send(json.dumps({"api_key": api_key, "encoding": "mulaw"}))
        for frame in odd_frames(out.getvalue(), 9):
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        got = list(messages(ws))
        assert close_code(ws) == 1000
    assert [p["text"] for p in got[-1]["phrases"]] == PHRASES


def test_v1_stream_acks_each_piece_when_asked(ws_api: str, api_key: str, audio: np.ndarray) -> None:
    """``"acks": true``: one ``{"type": "ack", "seq", "audio_seconds"}`` per piece, after its
    phrases and partial (a client's flow control, and the benchmark's latency)."""
    pcm = audio.astype("<i2").tobytes()
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({"acks": True}))
        acks = []
        for k in range(3):
            ws.send(pcm[k * 4800 : (k + 1) * 4800])  # 300 ms: a piece of its own
            while (message := json.loads(ws.recv(timeout=30)))["type"] != "ack":
                assert message["type"] in ("partial", "phrase")
            acks.append(message)
        ws.send(json.dumps({"type": "end"}))
        assert list(messages(ws))[-1]["type"] == "final"
    assert acks == [{"type": "ack", "seq": k, "audio_seconds": round(0.3 * (k + 1), 3)} for k in range(3)]
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({"acks": "yes"}))
        reply = list(messages(ws))
        assert reply[-1]["code"] == "invalid_config" and close_code(ws) == 1003


def test_v1_stream_errors_bad_key_and_bad_config(ws_api: str, api_key: str) -> None:
    with connect(f"{ws_api}/v1/stream", additional_headers=auth("tone_nope_bad")) as ws:
        got = list(messages(ws))
        assert got[0]["type"] == "error" and got[0]["code"] == "unauthorized" and got[0]["message"]
        assert close_code(ws) == 1008
    with connect(f"{ws_api}/v1/stream") as ws:  # no key at all
        ws.send(json.dumps({"sample_rate": 8000}))
        got = list(messages(ws))
        assert got[0]["code"] == "unauthorized" and close_code(ws) == 1008
    for config in ({"encoding": "opus"}, {"sample_rate": "fast"}, {"colour": "blue"}, "not json"):
        with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
            ws.send(config if isinstance(config, str) else json.dumps(config))
            got = list(messages(ws))
            assert got[0]["type"] == "error" and got[0]["code"] in ("invalid_config", "invalid_message"), got
            assert close_code(ws) == 1003
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({}))
        ws.send(json.dumps({"type": "pause"}))
        got = list(messages(ws))
        assert got[-1]["code"] == "invalid_message" and close_code(ws) == 1003
    deep = "[" * 100_000 + "]" * 100_000  # past the JSON decoder's recursion: a 1011 before
    for first in (deep, json.dumps({})):
        with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
            ws.send(first)
            if first != deep:
                ws.send(deep)
            got = list(messages(ws))
            assert got[-1]["code"] == "invalid_message" and "nested too deeply" in got[-1]["message"], got
            assert close_code(ws) == 1003


def test_v1_stream_a_stalled_client_is_closed_with_the_idle_reason(
    ws_env: dict[str, str], logs: Path, ws_worker: Proc, api_key: str, audio: np.ndarray
) -> None:
    proc = start_api({**ws_env, "TONE_STREAM_IDLE_TIMEOUT_SECONDS": "2"}, logs, "ws-api-idle")
    try:
        url = (proc.url or "").replace("http://", "ws://")
        with connect(f"{url}/v1/stream", additional_headers=auth(api_key)) as ws:
            ws.send(json.dumps({}))
            ws.send(audio[:4000].astype("<i2").tobytes())
            started = time.monotonic()
            got = list(messages(ws))
            waited = time.monotonic() - started
            assert got[-1]["type"] == "error" and got[-1]["code"] == "idle_timeout", got
            assert "2 s" in got[-1]["message"]
            assert close_code(ws) == 4408 and ws.close_reason and "no data" in ws.close_reason
            assert 1.5 < waited < 10
    finally:
        proc.stop()


def test_tone_demo_protocol(
    ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]
) -> None:
    pcm = audio.astype("<i2").tobytes()
    frames = [pcm[i : i + 4800] for i in range(0, len(pcm), 4800)] + [b""]
    transcripts = []
    with connect(f"{ws_api}/api/ws", additional_headers=auth(api_key)) as ws:
        for frame in frames:
            while True:  # transcripts, then the ready that asks for the next frame
                message = json.loads(ws.recv(timeout=30))
                if message["event"] == "ready":
                    break
                transcripts.append(message)
            ws.send(frame)
        transcripts += list(messages(ws))
        assert close_code(ws) == 1000
    assert all(m["event"] == "transcript" for m in transcripts)
    phrases = [
        {"text": p["text"], "start_time": p["start_time"], "end_time": p["end_time"]} for p in expected
    ]
    assert [m["phrase"] for m in transcripts] == phrases
    with connect(f"{ws_api}/api/ws") as ws:  # no key: refused
        got = list(messages(ws))
        assert got[-1]["event"] == "error" and close_code(ws) == 1008


def vosk_session(ws: ClientConnection, frames: list[bytes], config: dict[str, Any]) -> list[dict[str, Any]]:
    """As Vosk's own ``websocket/test.py`` does: the config, then per frame exactly one reply read,
    then ``{"eof": 1}`` and one last reply. Nothing else may arrive (a stale reply would be read
    as the next frame's)."""
    ws.send(json.dumps({"config": config}))
    got = []
    for frame in frames:
        ws.send(frame)
        got.append(json.loads(ws.recv(timeout=30)))
    ws.send('{"eof" : 1}')
    got.append(json.loads(ws.recv(timeout=30)))
    assert list(messages(ws)) == []  # then the close, nothing more
    assert close_code(ws) == 1000
    return got


def vosk_words(phrases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"word": w["text"], "start": w["start"], "end": w["end"], "conf": 1.0}
        for p in phrases
        for w in p["words"]
    ]


def test_vosk_protocol(ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]) -> None:
    pcm = audio.astype("<i2").tobytes()
    frames = odd_frames(pcm, 21)
    with connect(f"{ws_api}/vosk", additional_headers=auth(api_key)) as ws:
        got = vosk_session(ws, frames, {"sample_rate": 8000})
    assert len(got) == len(frames) + 1
    results = [m for m in got if "result" in m]
    assert " ".join(m["text"] for m in results) == " ".join(PHRASES)
    assert [w for m in results for w in m["result"]] == vosk_words(expected)
    partials = [m["partial"] for m in got if "partial" in m]
    assert any(partials) and all(isinstance(p, str) for p in partials)

    # one frame of the whole call closes several phrases at once: still one reply, joined
    with connect(f"{ws_api}/vosk", additional_headers=auth(api_key)) as ws:
        got = vosk_session(ws, [pcm], {"sample_rate": 8000})
    assert len(got) == 2 and "result" in got[0] and len(got[0]["text"].split()) > 2, got
    assert [w for m in got if "result" in m for w in m["result"]] == vosk_words(expected)


def test_vosk_key_in_the_config_and_query_keys_only_where_allowed(
    ws_api: str, ws_env: dict[str, str], logs: Path, api_key: str, audio: np.ndarray,
    expected: list[dict[str, Any]]
) -> None:  # fmt: skip
    pcm = audio.astype("<i2").tobytes()
    frames = [pcm[i : i + 8000] for i in range(0, len(pcm), 8000)]
    with connect(f"{ws_api}/vosk") as ws:  # no header: the key in the config message
        got = vosk_session(ws, frames, {"sample_rate": 8000, "api_key": api_key})
    assert [w for m in got if "result" in m for w in m["result"]] == vosk_words(expected)
    with connect(f"{ws_api}/vosk") as ws:  # no key at all
        ws.send(json.dumps({"config": {"sample_rate": 8000}}))
        reply = list(messages(ws))
        assert reply[-1]["error"]["code"] == "unauthorized" and close_code(ws) == 1008
    for path in ("/vosk", "/api/ws"):  # this server takes no keys in the query string
        with connect(f"{ws_api}{path}?api_key={api_key}") as ws:
            reply = list(messages(ws))
            assert "query_key_disabled" in json.dumps(reply[-1]) and close_code(ws) == 1008, reply

    proc = start_api({**ws_env, "TONE_WS_QUERY_KEYS": "1"}, logs, "ws-query-api")
    try:
        url = (proc.url or "").replace("http://", "ws://")
        with connect(f"{url}/vosk?api_key={api_key}") as ws:
            got = vosk_session(ws, frames, {"sample_rate": 8000})
        assert [w for m in got if "result" in m for w in m["result"]] == vosk_words(expected)
        with connect(f"{url}/api/ws?api_key={api_key}") as ws:
            assert json.loads(ws.recv(timeout=30)) == {"event": "ready"}
            ws.send(pcm)
            transcripts = []
            while True:
                message = json.loads(ws.recv(timeout=30))
                if message["event"] == "ready":
                    break
                transcripts.append(message)
            ws.send(b"")
            transcripts += list(messages(ws))
        assert [m["phrase"]["text"] for m in transcripts] == PHRASES
        with connect(f"{url}/api/ws?api_key=wrong") as ws:
            reply = list(messages(ws))
            assert reply[-1]["event"] == "error" and close_code(ws) == 1008
    finally:
        proc.stop()


def test_v1_stream_store_true_keeps_a_completed_job(
    ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]
) -> None:
    import httpx

    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({"store": True}))
        for frame in odd_frames(audio.astype("<i2").tobytes(), 13):
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        final = list(messages(ws))[-1]
    assert final["type"] == "final" and final["phrases"] == expected and final["job_id"]
    base = ws_api.replace("ws://", "http://")
    with httpx.Client(base_url=base, headers=auth(api_key), timeout=30) as client:
        job = client.get(f"/v1/jobs/{final['job_id']}").json()
        assert job["status"] == "completed" and job["kind"] == "stream"
        assert job["duration"] == pytest.approx(len(audio) / 8000, abs=0.01)
        transcript = client.get(f"/v1/jobs/{final['job_id']}/transcript").json()
        assert transcript["phrases"] == expected
        assert client.get(f"/v1/jobs/{final['job_id']}/transcript?format=txt").status_code == 200
        assert final["job_id"] in [j["id"] for j in client.get("/v1/jobs").json()["data"]]


def test_v1_stream_keeping_can_be_decided_at_the_end(
    ws_api: str, api_key: str, audio: np.ndarray, expected: list[dict[str, Any]]
) -> None:
    finals = {}
    for config, end in (({}, {"store": True}), ({"store": True}, {"store": False})):
        with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
            ws.send(json.dumps(config))
            ws.send(audio.astype("<i2").tobytes())
            ws.send(json.dumps({"type": "end", **end}))
            finals[end["store"]] = list(messages(ws))[-1]
    assert finals[True]["phrases"] == expected and finals[True]["job_id"]
    assert finals[False]["phrases"] == expected and "job_id" not in finals[False]
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({}))
        ws.send(json.dumps({"type": "end", "store": "yes"}))
        error = list(messages(ws))[-1]
        assert error["type"] == "error" and error["code"] == "invalid_message"


def test_v1_stream_stereo_gives_the_offline_split_phrases(
    ws_api: str, api_key: str, tone_model: Path, tmp_path: Path
) -> None:
    from tests.api.test_streaming import stereo_recording

    samples = stereo_recording()
    path = tmp_path / "call.wav"
    sf.write(path, samples, 8000, subtype="PCM_16")
    split = Recognizer.load(tone_model, threads=1).transcribe_file(path, channels="split")
    expected = written([p.to_dict() for p in split.phrases])
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps({"channels": 2}))
        for frame in odd_frames(samples.astype("<i2").tobytes(), 17):  # split frames included
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        got = list(messages(ws))
    phrases = [{k: v for k, v in m.items() if k != "type"} for m in got if m["type"] == "phrase"]
    assert phrases == expected and {p["channel"] for p in expected} == {0, 1}
    assert got[-1] == {"type": "final", "phrases": expected}


def test_v1_stream_writes_the_display_form_and_redacts_with_the_sessions_options(
    ws_api: str, api_key: str
) -> None:
    import httpx

    spoken = ["оплата двадцать пять тысяч триста рублей", "да иди ты нахуй"]
    audio, _ = synthesize(spoken)
    config = {
        "redact": ["profanity"],
        "redact_raw": True,
        "replacements": {"оплата": "Оплата"},
        "store": True,
    }
    with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
        ws.send(json.dumps(config))
        for frame in odd_frames(audio.astype("<i2").tobytes(), 7):
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        got = list(messages(ws))
    events = [m for m in got if m["type"] == "phrase"]
    final = got[-1]
    assert [p["display"] for p in final["phrases"]] == ["Оплата 25 300 рублей", "да иди ты [мат]"]
    assert [p["text"] for p in final["phrases"]] == [spoken[0], "да иди ты [мат]"]
    assert [e["display"] for e in events] == ["Оплата 25 300 рублей", "да иди ты [мат]"]
    assert all(m.get("text") == "" for m in got if m["type"] == "partial")  # no partials under redaction
    assert "нахуй" not in json.dumps(got, ensure_ascii=False)
    base = ws_api.replace("ws://", "http://")
    doc = httpx.get(f"{base}/v1/jobs/{final['job_id']}/transcript", headers=auth(api_key), timeout=30).json()
    assert doc["display_text"] == "Оплата 25 300 рублей да иди ты [мат]"
    for bad, code in (
        ({"redact": ["dna"]}, "invalid_redact"),
        ({"redact_audio": True}, "invalid_redact_audio"),
    ):
        with connect(f"{ws_api}/v1/stream", additional_headers=auth(api_key)) as ws:
            ws.send(json.dumps(bad))
            (error, *_) = list(messages(ws))
            assert error["type"] == "error" and error["code"] == code and close_code(ws) == 1003
