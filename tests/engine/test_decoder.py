"""The greedy decoder (numpy runs) against the plain frame-by-frame definition it replaced."""

from __future__ import annotations

from itertools import groupby

import numpy as np

from shared.asr.decoder import GreedyDecoder, WordSpan
from shared.asr.types import BLANK_ID, LABELS, SPACE_ID


def plain_greedy(logprobs: np.ndarray) -> tuple[str, list[WordSpan]]:
    """Argmax per frame, collapse repeats, drop blanks, strip; words between spaces, with frames."""
    runs, pos = [], 0
    for token, group in groupby(logprobs.argmax(axis=-1).tolist()):
        n = sum(1 for _ in group)
        runs.append((token, pos, pos + n))
        pos += n
    text = "".join(LABELS[t] for t, _, _ in runs if t != BLANK_ID).strip()
    words: list[WordSpan] = []
    letters: list[tuple[int, int, int]] = []
    for run in [*runs, (SPACE_ID, pos, pos)]:
        if run[0] == SPACE_ID and letters:
            words.append(("".join(LABELS[t] for t, _, _ in letters), letters[0][1], letters[-1][2]))
            letters = []
        elif run[0] not in (SPACE_ID, BLANK_ID):
            letters.append(run)
    return text, words


def test_greedy_equals_the_frame_by_frame_definition() -> None:
    rng = np.random.default_rng(0)
    decoder = GreedyDecoder()
    for _ in range(3000):
        lp = rng.normal(size=(int(rng.integers(0, 60)), 35)).astype(np.float32)
        lp[:, BLANK_ID] += rng.uniform(0, 3)  # blanks and spaces as often as in speech
        lp[:, SPACE_ID] += rng.uniform(0, 2)
        assert decoder.decode(lp) == plain_greedy(lp)
