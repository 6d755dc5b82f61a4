"""The phrase splitter's rules (T-ONE.md), on hand-made speech/silence patterns."""

from __future__ import annotations

import numpy as np

from shared.asr import splitter
from shared.asr.types import BLANK_ID

SPEECH, SILENT = True, False


def frames(pattern: list[tuple[bool, int]]) -> np.ndarray:
    """Logprobs whose frames are speech (a letter) or silence (blank), run by run."""
    rows = []
    for speech, n in pattern:
        row = np.full(35, -30.0, np.float32)
        row[0 if speech else BLANK_ID] = 0.0
        rows += [row] * n
    return np.array(rows, np.float32).reshape(-1, 35)


def run(pattern: list[tuple[bool, int]], *, chunk: int = 10) -> list[tuple[int, int]]:
    lp = frames(pattern)
    buf, off, out = np.zeros((0, 35), np.float32), 0, []
    for i in range(0, len(lp), chunk):
        phrases, buf, off = splitter.split(buf, off, lp[i : i + chunk], is_last=i + chunk >= len(lp))
        out += [(p.start_frame, p.end_frame) for p in phrases]
    return out


def test_twenty_silent_frames_separate_phrases_and_nineteen_do_not() -> None:
    assert run([(SILENT, 10), (SPEECH, 15), (SILENT, 20), (SPEECH, 5), (SILENT, 30)]) == [(10, 25), (45, 50)]
    assert run([(SILENT, 10), (SPEECH, 15), (SILENT, 19), (SPEECH, 6), (SILENT, 30)]) == [(10, 50)]


def test_speech_at_the_very_start_counts_the_pretended_silence() -> None:
    assert run([(SPEECH, 5), (SILENT, 25)]) == [(0, 5)]


def test_last_chunk_closes_the_open_phrase() -> None:
    assert run([(SILENT, 10), (SPEECH, 20)]) == [(10, 30)]


def test_long_speech_is_cut_every_2000_frames_even_unfinished() -> None:
    assert run([(SILENT, 20), (SPEECH, 4500), (SILENT, 40)]) == [(20, 2020), (2020, 4020), (4020, 4520)]


def test_finished_stretch_of_exactly_2000_frames_gives_an_empty_phrase() -> None:
    # seen whole, the reference emits (2020, 2020) too; the decoder drops it for having no text
    pattern = [(SILENT, 20), (SPEECH, 2000), (SILENT, 40)]
    assert run(pattern, chunk=5000) == [(20, 2020), (2020, 2020)]
    assert run(pattern) == [(20, 2020)]  # in 10-frame chunks the cut comes before the stretch ends


def test_phrase_logprobs_extend_three_frames_each_side() -> None:
    lp = frames([(SILENT, 25), (SPEECH, 10), (SILENT, 25)])
    phrases, _, _ = splitter.split(np.zeros((0, 35), np.float32), 0, lp, is_last=True)
    (p,) = phrases
    assert (p.start_frame, p.end_frame, p.first_frame, len(p.logprobs)) == (25, 35, 22, 16)


def test_silent_buffer_keeps_only_three_frames() -> None:
    phrases, buf, off = splitter.split(
        np.zeros((0, 35), np.float32), 0, frames([(SILENT, 50)]), is_last=False
    )
    assert (phrases, len(buf), off) == ([], 3, 47)


def test_split_batch_equals_split_per_stream() -> None:
    """The batched splitter (fast paths for silence, open speech and a closing pause) gives exactly
    the phrases, buffers and offsets of ``split`` per stream, for random speech/pause patterns."""
    from shared.asr.stream import StreamState

    rng = np.random.default_rng(5)
    batch, steps = 12, 700
    patterns = []
    for _ in range(batch):
        runs: list[tuple[bool, int]] = []
        while sum(n for _, n in runs) < steps * 10:
            runs.append((True, int(rng.choice([1, 3, 15, 60, 400, 2500]))))
            runs.append((False, int(rng.choice([1, 5, 18, 19, 20, 21, 22, 23, 40, 80]))))
        lp = frames(runs)[: steps * 10]
        lp += rng.normal(0, 0.01, lp.shape).astype(np.float32)  # not all frames alike
        patterns.append(lp)
    streams = [StreamState() for _ in range(batch)]
    refs = [(np.zeros((0, 35), np.float32), 0) for _ in range(batch)]
    got_all: list[list[tuple[int, int, int, bytes]]] = [[] for _ in range(batch)]
    want_all: list[list[tuple[int, int, int, bytes]]] = [[] for _ in range(batch)]
    for k in range(steps):
        last = [k == steps - 1 or (i == 3 and k == steps // 2) for i in range(batch)]
        active = [i for i in range(batch) if not (i == 3 and k > steps // 2)]
        chunk = np.stack([patterns[i][k * 10 : k * 10 + 10] for i in active])
        for i, raws in zip(
            active, splitter.split_batch([streams[i] for i in active], chunk, [last[i] for i in active])
        ):
            got_all[i] += [(r.start_frame, r.end_frame, r.first_frame, r.logprobs.tobytes()) for r in raws]
        for i in active:
            buf, off = refs[i]
            raws, buf, off = splitter.split(buf, off, patterns[i][k * 10 : k * 10 + 10], is_last=last[i])
            refs[i] = (buf, off)
            want_all[i] += [(r.start_frame, r.end_frame, r.first_frame, r.logprobs.tobytes()) for r in raws]
            s = streams[i]
            assert s.offset == off and np.array_equal(s.buffer, buf), (i, k)
    assert got_all == want_all
    assert sum(len(w) for w in want_all) > 50
