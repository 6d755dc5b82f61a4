"""CTC decoders: greedy and beam search (pyctcdecode, with KenLM when available), with word times."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from .splitter import RawPhrase
from .types import BLANK_ID, LABELS, SPACE_ID, Phrase, Word, frame_to_seconds

DecoderName = Literal["greedy", "beam"]
BEAM_WIDTH = 200
LM_ALPHA = 0.4
LM_BETA = 0.9
HOTWORD_WEIGHT = 10.0  # pyctcdecode's default: the log-score bonus per matched hot-word character
# pyctcdecode's defaults, which the reference's decode() keeps: a frame's token is a candidate when
# its log-probability (after pyctcdecode's own log-softmax and clip) is at least this
TOKEN_MIN_LOGP = -5.0
MIN_TOKEN_CLIP_P = 1e-15
# the single-path test asks every other token to be this far below the threshold, so that float
# rounding between our log-softmax and pyctcdecode's can never decide it
SINGLE_PATH_MARGIN = 1e-3

WordSpan = tuple[str, int, int]  # text, first frame, one past the last frame (relative to logprobs)


class Decoder(Protocol):
    name: str

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> tuple[str, list[WordSpan]]: ...


class GreedyDecoder:
    """Argmax per frame, collapse repeats, drop blanks, strip spaces at the ends (no hot words)."""

    name = "greedy"

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> tuple[str, list[WordSpan]]:
        ids = logprobs.argmax(axis=-1)
        n = len(ids)
        if not n:
            return "", []
        # runs of equal tokens, found with numpy rather than a Python pass over every frame
        bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts = np.concatenate(([0], bounds)).tolist()
        ends = [*starts[1:], n]
        tokens = ids[starts].tolist()
        text = "".join([LABELS[t] for t in tokens if t != BLANK_ID]).strip()
        words: list[WordSpan] = []
        letters: list[int] = []
        first = last = 0
        for k, token in enumerate(tokens):
            if token == SPACE_ID:
                if letters:
                    words.append(("".join([LABELS[t] for t in letters]), first, last))
                    letters = []
            elif token != BLANK_ID:
                if not letters:
                    first = starts[k]
                letters.append(token)
                last = ends[k]
        if letters:
            words.append(("".join([LABELS[t] for t in letters]), first, last))
        return text, words


def single_path(logprobs: np.ndarray) -> bool:
    """Whether pyctcdecode's beam search can follow only one path through these frames.

    pyctcdecode extends its beams, frame by frame, with the tokens whose log-probability is at
    least ``TOKEN_MIN_LOGP`` (and always the frame's best). When every frame has just its best
    token above that, every step makes exactly one beam out of one: the search holds a single
    beam from the first frame to the last, and the language model, hot words and pruning only
    change its score, never its text. Its answer is then the argmax path, which
    :class:`SinglePathDecoder` spells exactly as pyctcdecode does, for a fraction of the cost
    (peaked frames are the common case for a CTC model: blanks and confident letters)."""
    if logprobs.ndim != 2 or not len(logprobs):
        return False
    x = logprobs.astype(np.float64)
    if np.isnan(x).any():
        return False
    if math.isclose(float(x.sum(axis=1).mean()), 1.0):
        return False  # pyctcdecode would read these as probabilities: leave it to pyctcdecode
    x = x - x.max(axis=1, keepdims=True)  # pyctcdecode's log-softmax and clip
    x = np.clip(x - np.log(np.exp(x).sum(axis=1, keepdims=True)), math.log(MIN_TOKEN_CLIP_P), 0)
    candidates = (x >= TOKEN_MIN_LOGP - SINGLE_PATH_MARGIN).sum(axis=1)
    return bool((candidates <= 1).all())


class SinglePathDecoder:
    """pyctcdecode's answer on frames where :func:`single_path` holds (the caller checks): the
    argmax path's words with their frames, and its text with runs of spaces made one, as
    pyctcdecode writes it. Hot words change only the one beam's score, so they change nothing."""

    name = "beam"

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> tuple[str, list[WordSpan]]:
        text, words = GreedyDecoder().decode(logprobs)
        return " ".join(text.split()), words


SINGLE_PATH = SinglePathDecoder()


class BeamSearchDecoder:
    """pyctcdecode's beam search with the reference's settings; KenLM scoring when an LM is given.
    Phrases whose frames leave the search a single path are spelled without running it
    (:func:`single_path`); ``fast_path=False`` always runs pyctcdecode."""

    name = "beam"

    def __init__(self, lm_path: str | Path | None = None, *, fast_path: bool = True) -> None:
        from pyctcdecode import build_ctcdecoder

        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        self.lm_path = str(lm_path) if lm_path else None
        self._decoder = build_ctcdecoder(
            labels=list(LABELS), kenlm_model_path=self.lm_path, alpha=LM_ALPHA, beta=LM_BETA
        )
        self.fast_path = fast_path
        self.single_paths = 0  # phrases spelled by the single-path rule, not by the search

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> tuple[str, list[WordSpan]]:
        """``hotwords`` (a stream's vocabulary) are boosted by pyctcdecode for this call only."""
        if self.fast_path and single_path(logprobs):
            self.single_paths += 1
            return SINGLE_PATH.decode(logprobs)
        # decode() is decode_beams(prune_history=True)[0][0]: the same call, keeping the word frames
        best = self._decoder.decode_beams(
            logprobs,
            beam_width=BEAM_WIDTH,
            token_min_logp=TOKEN_MIN_LOGP,
            prune_history=True,
            hotwords=list(hotwords) or None,
            hotword_weight=HOTWORD_WEIGHT,
        )[0]
        text, frames = best[0], best[2]
        return text, [(w, int(s), int(e)) for w, (s, e) in frames]


def kenlm_available() -> bool:
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return False
    return True


def to_phrase(decoder: Decoder, raw: RawPhrase, channel: int, hotwords: Sequence[str] = ()) -> Phrase | None:
    """Decode one splitter phrase into a Phrase with the reference's timestamps; None when empty."""
    text, spans = decoder.decode(raw.logprobs, hotwords)
    if not text:
        return None
    start = max(0.0, frame_to_seconds(raw.start_frame))
    end = max(start, frame_to_seconds(raw.end_frame))
    return Phrase(
        text=text,
        start=start,
        end=end,
        channel=channel,
        words=_words(spans, raw.first_frame, start, end),
        start_frame=raw.start_frame,
        end_frame=raw.end_frame,
    )


def _words(spans: Sequence[WordSpan], first_frame: int, start: float, end: float) -> tuple[Word, ...]:
    words = []
    for text, s, e in spans:
        w_start = min(max(start, frame_to_seconds(first_frame + s)), end)
        w_end = min(max(w_start, frame_to_seconds(first_frame + e)), end)
        words.append(Word(text=text, start=w_start, end=w_end))
    return tuple(words)
