"""A live session's phrases are appended, one save per piece writing only the phrases it released
(the ``phrases`` list, layout 4), not the whole session's again (layout 3's hash field, read and
rewritten by every piece: 25 → 68 KiB into Redis per piece over a 6-minute session); the final
answer still holds every phrase, in the offline run's order; a layout-3 session continued by this
worker keeps its earlier phrases. Real Redis, the tone model, the live worker's rounds."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.dev.models.tones import synthesize
from shared.platform.sessions import Item, Options, SessionStore, journal_key, phrases_key, session_key
from shared.platform.settings import Settings
from worker import streaming

WORDS = ["кот", "дом", "мир", "сад", "лес", "рот"]


@pytest.fixture
def live(
    servers: dict[str, str], tone_model: Path, recognizer: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SessionStore, Settings]]:
    monkeypatch.setattr(streaming, "get_recognizer", lambda _: recognizer)
    settings = Settings(model_path=str(tone_model), threads=1, redis_url=servers["REDIS_URL"])  # type: ignore[call-arg]
    store = streaming.store_for(settings)
    streaming._decoding.clear()
    streaming._states.clear()
    store.heartbeat(streaming.WORKER_ID)
    yield store, settings
    streaming._states.clear()


def step(
    store: SessionStore, settings: Settings, sid: str, seq: int, audio: np.ndarray | None
) -> dict[str, Any]:
    """One piece (None: the finalize) through a live worker's round; its answer's body."""
    if audio is None:
        item = Item(sid, seq, "finalize", uuid.uuid4().hex, time.time())
    else:
        store.r.hset(journal_key(sid), str(seq), audio.tobytes())
        item = Item(sid, seq, "chunk", uuid.uuid4().hex, time.time())
    assert streaming.run_round(store, settings, [item]) == (1, [], [])
    answer = store.stored_final(sid) if audio is None else store.stored_answer(sid, seq)
    assert answer is not None and answer["status"] == 200, answer
    return dict(answer["body"])


def listed(store: SessionStore, sid: str) -> list[str]:
    return [json.loads(p)["text"] for p in store.r.lrange(phrases_key(sid), 0, -1)]


def test_each_piece_appends_its_phrases_and_the_final_holds_them_all(
    live: tuple[SessionStore, Settings], recognizer: Any
) -> None:
    store, settings = live
    audio, _ = synthesize(WORDS, lead=0.3, pause=1.2, tail=1.5)
    offline = [p.to_dict() for p in recognizer.transcribe(audio)]
    assert [p["text"] for p in offline] == WORDS
    sid = store.create("t", Options(), 300)
    piece = 8000  # 1 s pieces
    released: list[dict[str, Any]] = []
    for seq, at in enumerate(range(0, len(audio), piece)):
        body = step(store, settings, sid, seq, audio[at : at + piece])
        released += body["phrases"]
        # the session's hash holds no list of every phrase; its list holds exactly those released
        assert not store.r.hexists(session_key(sid), "phrases")
        assert listed(store, sid) == [p["text"] for p in released]
        assert store.r.ttl(phrases_key(sid)) > 0 or not released
    assert len(released) >= 4  # most phrases came out before the end
    final = step(store, settings, sid, seq + 1, None)
    assert final["is_final"] and final["phrases"][: len(released)] == released
    assert [p["text"] for p in final["phrases"]] == WORDS
    for ours, theirs in zip(final["phrases"], offline):
        assert (ours["start_time"], ours["end_time"]) == pytest.approx(
            (theirs["start_time"], theirs["end_time"])
        )
    assert not store.r.exists(phrases_key(sid))  # the final answer holds them: the list went with the journal


def test_a_layout_3_session_keeps_its_earlier_phrases(live: tuple[SessionStore, Settings]) -> None:
    """Saved by a worker before this layout: its phrases are in the hash's ``phrases`` field. The
    next piece moves them to the list, ahead of its own; a finalize right away answers them too."""
    store, settings = live
    earlier = [{"text": "раз", "start_time": 0.0, "end_time": 0.5, "channel": 0, "words": []}]
    audio, _ = synthesize(["кот"], lead=0.3, tail=1.5)
    moved = store.create("t", Options(), 300)
    store.r.hset(
        session_key(moved), mapping={"layout": "3", "phrases": json.dumps(earlier, ensure_ascii=False)}
    )
    assert [p["text"] for p in step(store, settings, moved, 0, audio)["phrases"]] == ["кот"]
    assert listed(store, moved) == ["раз", "кот"] and not store.r.hexists(session_key(moved), "phrases")
    assert [p["text"] for p in step(store, settings, moved, 1, None)["phrases"]] == ["раз", "кот"]

    ending = store.create("t", Options(), 300)
    store.r.hset(
        session_key(ending), mapping={"layout": "3", "phrases": json.dumps(earlier, ensure_ascii=False)}
    )
    assert [p["text"] for p in step(store, settings, ending, 0, None)["phrases"]] == ["раз"]
    assert not store.r.exists(phrases_key(ending)) and not store.r.hexists(session_key(ending), "phrases")


def test_a_corrupt_piece_keeps_the_phrases_it_did_not_move(live: tuple[SessionStore, Settings]) -> None:
    """A piece answered an error without stepping saves no phrases: a layout-3 session's field
    stays until a piece moves it (the save drops the field only with the phrases it appends)."""
    store, settings = live
    earlier = [{"text": "раз", "start_time": 0.0, "end_time": 0.5, "channel": 0, "words": []}]
    sid = store.create("t", Options(), 300)
    store.r.hset(
        session_key(sid), mapping={"layout": "3", "phrases": json.dumps(earlier, ensure_ascii=False)}
    )
    store.r.hset(journal_key(sid), "0", b"RIFF\x00\x00\x00\x00WAVEnot a wav file")  # a broken WAV
    item = Item(sid, 0, "chunk", uuid.uuid4().hex, time.time())
    assert streaming.run_round(store, settings, [item]) == (1, [], [])
    answer = store.stored_answer(sid, 0)
    assert answer is not None and answer["status"] == 415
    assert store.phrases_many([sid]) == [earlier]
