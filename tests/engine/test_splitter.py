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
