"""The engine against the recognizing test model: exact transcripts, streaming, state, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shared.asr.engine import Recognizer
from shared.asr.errors import StreamStateError
from shared.asr.stream import StreamState
from shared.asr.types import CHUNK_SAMPLES, LABELS, Phrase
from shared.dev.models.tones import synthesize

PHRASES = ["здравствуйте вы позвонили в банк", "чем я могу вам помочь", "съешь ещё этих мягких булок"]


def texts_and_times(phrases: list[Phrase]) -> list[tuple[str, float, float]]:
    return [(p.text, p.start, p.end) for p in phrases]


def random_phrases(rnd: random.Random, n: int) -> list[str]:
    letters = LABELS[:-1]
    return [
        " ".join(
            "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 7))) for _ in range(rnd.randint(1, 4))
        )
        for _ in range(n)
    ]


def test_offline_transcript_has_exact_texts_times_and_words(recognizer: Recognizer) -> None:
    audio, expected = synthesize(PHRASES)
    transcript = recognizer.transcribe_file(audio)
    assert [p.text for p in transcript.phrases] == PHRASES
    for got, want in zip(transcript.phrases, expected):
        assert (got.start, got.end) == (want.start, want.end)
        assert [(w.text, w.start, w.end) for w in got.words] == list(want.words)
    assert transcript.full_text == " ".join(PHRASES)
    assert transcript.duration == pytest.approx(len(audio) / 8000)


@pytest.mark.parametrize("seed", range(6))
def test_stream_in_any_chunking_equals_offline(recognizer: Recognizer, seed: int) -> None:
    rnd = random.Random(seed)
    audio, _ = synthesize(random_phrases(rnd, rnd.randint(1, 4)), pause=rnd.choice([0.6, 0.63, 0.9, 2.0]))
    audio = np.concatenate([np.zeros(rnd.randint(0, 2399), np.int16), audio])  # off the 300 ms grid
    offline = list(recognizer.transcribe(audio))
    assert offline
    stream = recognizer.new_stream()
    streamed: list[Phrase] = []
    pos = 0
    while pos < len(audio):
        n = rnd.choice([1, 7, 160, 2399, 2400, 2401, rnd.randint(1, 9000)])
        streamed += recognizer.feed(stream, audio[pos : pos + n])
        pos += n
    streamed += recognizer.finish(stream)
    assert streamed == offline
    assert stream.finished and stream.samples_in == len(audio)


def test_samples_beyond_int16_are_clipped_and_int16_ones_taken_as_they_are(recognizer: Recognizer) -> None:
    """A stream takes int16 samples as they are and clips any other dtype to int16's range (a
    louder-than-full-scale int32 or float input sounds as its clipped int16 twin)."""
    audio, _ = synthesize(["кот"], lead=0.3, tail=0.9)
    loud = audio.astype(np.int32) * 3  # far past full scale
    clipped = np.clip(loud, -32768, 32767).astype(np.int16)
    twins = [recognizer.new_stream() for _ in range(4)]
    inputs = [loud, loud.astype(np.float64), clipped, clipped[::-1].copy()[::-1]]  # the last: a strided view
    outputs = [recognizer.feed(s, x) + recognizer.finish(s) for s, x in zip(twins, inputs)]
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    assert [s.to_bytes() for s in twins[1:]] == [twins[0].to_bytes()] * 3
    stream = recognizer.new_stream()
    recognizer.feed(stream, loud[:1000])  # under one chunk: it waits in ``pending``
    assert stream.pending.dtype == np.int16 and np.array_equal(stream.pending, clipped[:1000])


def test_state_survives_bytes_round_trip_between_recognizers(tone_model, recognizer: Recognizer) -> None:
    audio, _ = synthesize(PHRASES)
    offline = list(recognizer.transcribe(audio))
    other = Recognizer.load(tone_model, threads=1)  # "another process"
    blob = recognizer.new_stream().to_bytes()
    phrases: list[Phrase] = []
    for i, start in enumerate(range(0, len(audio), 3001)):
        worker = (recognizer, other)[i % 2]
        state = StreamState.from_bytes(blob)
        phrases += worker.feed(state, audio[start : start + 3001])
        blob = state.to_bytes()
    state = StreamState.from_bytes(blob)
    phrases += other.finish(state)
    assert phrases == offline


def test_lost_model_state_loses_letters(recognizer: Recognizer) -> None:
    audio, _ = synthesize(["абвгдежзиклмнопрст"])
    stream = recognizer.new_stream()
    half = len(audio) // 2
    phrases = recognizer.feed(stream, audio[:half])
    stream.model_state[:] = 0  # the state is lost: the 0.33 s held in it are gone
    phrases += recognizer.feed(stream, audio[half:]) + recognizer.finish(stream)
    assert "".join(p.text for p in phrases) != "абвгдежзиклмнопрст"


def test_state_bytes_are_versioned_and_checked() -> None:
    state = StreamState(offset=7, seq=3, channel=1, decoder="beam")
    state.buffer = np.random.default_rng(0).normal(size=(5, 35)).astype(np.float32)
    blob = state.to_bytes()
    back = StreamState.from_bytes(blob)
    assert (back.offset, back.seq, back.channel, back.decoder) == (7, 3, 1, "beam")
    assert np.array_equal(back.buffer, state.buffer) and np.array_equal(back.pending, state.pending)
    assert blob[:4] == b"T1ST"
    corrupt = bytearray(blob)
    corrupt[100] ^= 0xFF
    with pytest.raises(StreamStateError, match="checksum"):
        StreamState.from_bytes(bytes(corrupt))
    with pytest.raises(StreamStateError, match="version"):
        StreamState.from_bytes(blob[:4] + b"\x09\x00" + blob[6:])
    with pytest.raises(StreamStateError, match="bytes"):
        StreamState.from_bytes(blob[:-10])
    with pytest.raises(StreamStateError, match="magic"):
        StreamState.from_bytes(b"pickle!!" + blob[8:])


def test_batched_step_equals_one_stream_at_a_time(recognizer: Recognizer) -> None:
    rnd = random.Random(7)
    audios = [synthesize(random_phrases(rnd, 3))[0] for _ in range(5)]
    alone = [list(recognizer.transcribe(a)) for a in audios]
    # streams at different positions advance together, one model call per round
    streams = [recognizer.new_stream() for _ in audios]
    got: list[list[Phrase]] = [[] for _ in audios]
    for i, a in enumerate(audios):  # stagger the starts
        got[i] += recognizer.feed(streams[i], a[: i * 3 * CHUNK_SAMPLES])
    pos = [i * 3 * CHUNK_SAMPLES for i in range(len(audios))]
    while any(p < len(a) for p, a in zip(pos, audios)):
        items = [
            (s, a[p : p + 5000], p + 5000 >= len(a)) for s, a, p in zip(streams, audios, pos) if p < len(a)
        ]
        owners = [i for i, (p, a) in enumerate(zip(pos, audios)) if p < len(a)]
        for i, phrases in zip(owners, recognizer.advance(items, max_batch=4)):
            got[i] += phrases
            pos[i] += 5000
    assert got == alone


def test_transcribe_many_with_batches_equals_single_files(recognizer: Recognizer) -> None:
    rnd = random.Random(11)
    audios = [synthesize(random_phrases(rnd, rnd.randint(1, 3)))[0] for _ in range(7)]
    alone = [recognizer.transcribe_file(a).phrases for a in audios]
    batched = dict(recognizer.transcribe_many(audios, batch=4))
    assert sorted(batched) == list(range(7))
    assert [batched[i].phrases for i in range(7)] == alone


def test_lanes_give_the_same_transcripts(tone_model, recognizer: Recognizer) -> None:
    rnd = random.Random(12)
    audios = [synthesize(random_phrases(rnd, rnd.randint(1, 3)))[0] for _ in range(7)]
    alone = [recognizer.transcribe_file(a).phrases for a in audios]  # one thread, one session
    laned = Recognizer.load(tone_model, threads=2, lanes=2)
    batched = dict(laned.transcribe_many(audios, batch=6))
    assert laned.bank.lane_steps > 0
    assert [batched[i].phrases for i in range(7)] == alone


def test_a_warm_up_step_changes_no_transcript(tone_model, recognizer: Recognizer) -> None:
    """A worker steps its model once at its batch before the first job: nothing of that step
    reaches a stream (with lanes too: 8 rows step on both)."""
    rnd = random.Random(13)
    audios = [synthesize(random_phrases(rnd, rnd.randint(1, 3)))[0] for _ in range(5)]
    alone = [recognizer.transcribe_file(a).phrases for a in audios]
    warmed = Recognizer.load(tone_model, threads=2, lanes=2)
    assert warmed.warm_up(8) > 0
    assert warmed.bank.lane_steps == 1
    batched = dict(warmed.transcribe_many(audios, batch=4))
    assert [batched[i].phrases for i in range(5)] == alone
    assert [warmed.transcribe_file(a).phrases for a in audios] == alone


def test_split_channels_carry_channel_and_merge_in_time_order(recognizer: Recognizer) -> None:
    agent, _ = synthesize(["добрый день", "чем помочь"], lead=0.3, pause=3.0)
    client, _ = synthesize(["карта заблокирована"], lead=2.1)
    n = max(len(agent), len(client))
    stereo = np.stack([np.pad(agent, (0, n - len(agent))), np.pad(client, (0, n - len(client)))], axis=1)
    phrases = list(recognizer.transcribe(stereo, channels="split"))
    assert [(p.channel, p.text) for p in phrases] == [
        (0, "добрый день"),
        (1, "карта заблокирована"),
        (0, "чем помочь"),
    ]
    starts = [p.start for p in phrases]
    assert starts == sorted(starts)
    mixed = list(recognizer.transcribe(stereo, channels="mix"))
    assert mixed and {p.channel for p in mixed} == {0}


def test_finished_stream_refuses_more_audio(recognizer: Recognizer) -> None:
    stream = recognizer.new_stream()
    recognizer.finish(stream)
    with pytest.raises(StreamStateError, match="finished"):
        recognizer.feed(stream, np.zeros(10, np.int16))


def test_empty_audio_gives_no_phrases(recognizer: Recognizer) -> None:
    assert list(recognizer.transcribe(np.zeros(0, np.int16))) == []


def test_beam_search_without_lm_agrees_with_greedy_on_clear_audio(recognizer: Recognizer) -> None:
    audio, _ = synthesize(PHRASES)
    greedy = recognizer.transcribe_file(audio, decoder="greedy").phrases
    beam = recognizer.transcribe_file(audio, decoder="beam").phrases
    assert [p.text for p in beam] == [p.text for p in greedy] == PHRASES
    assert [(w.text for w in p.words) for p in beam]
    assert [[w.text for w in p.words] for p in beam] == [p.text.split() for p in beam]
