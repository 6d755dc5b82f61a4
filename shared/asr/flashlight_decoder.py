"""An optional, faster beam search: flashlight-text's C++ CTC beam decoder with KenLM.

pyctcdecode (the reference's decoder, our default) is pure Python. flashlight-text (the
``lm`` extra, a cp311 x86-64 wheel) decodes in C++. Its word-LM decoder is lexicon-based:
it only spells words of a given vocabulary (a trie of their letters, each word's unigram score
smeared over its prefixes), where pyctcdecode also lets out-of-vocabulary words through with a
penalty. So it is an option for measuring (``make bench`` reports how often its phrases equal
pyctcdecode's on the same logits), not a drop-in: the reference-equal pyctcdecode path stays the
default.

Settings follow pyctcdecode's where they have a counterpart: beam 200, LM weight 0.4, word
insertion score 0.9, a beam threshold of 10 (pyctcdecode's ``beam_prune_logp``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .decoder import BEAM_WIDTH, LM_ALPHA, LM_BETA, WordSpan
from .types import BLANK_ID, LABELS, SPACE_ID


def flashlight_available() -> bool:
    try:
        import flashlight.lib.text.decoder  # noqa: F401
    except ImportError:
        return False
    return True


class FlashlightBeamDecoder:
    """flashlight-text's LexiconDecoder over ``words`` with the KenLM model at ``lm_path``."""

    name = "beam"

    def __init__(self, lm_path: str | Path, words: Iterable[str], *, beam_threshold: float = 10.0) -> None:
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoder,
            LexiconDecoderOptions,
            SmearingMode,
            Trie,
        )
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import create_word_dict

        vocab = sorted({w for w in words if w and all(c in LABELS[:-1] for c in w)})
        if not vocab:
            raise ValueError("flashlight's lexicon decoder needs a vocabulary of words in T-one's letters")
        lexicon = {w: [list(w)] for w in vocab}
        lexicon["<unk>"] = [["<unk>"]]  # the word dictionary's default entry (never spelled)
        self.word_dict = create_word_dict(lexicon)
        self.lm = KenLM(str(lm_path), self.word_dict)
        trie = Trie(len(LABELS) + 1, SPACE_ID)
        start = self.lm.start(False)
        for w in vocab:
            index = self.word_dict.get_index(w)
            _, score = self.lm.score(start, index)
            # a word's spelling ends with the word boundary (the space), as flashlight's lexicons do
            trie.insert([LABELS.index(c) for c in w] + [SPACE_ID], index, score)
        trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(
            beam_size=BEAM_WIDTH,
            beam_size_token=len(LABELS) + 1,
            beam_threshold=beam_threshold,
            lm_weight=LM_ALPHA,
            word_score=LM_BETA,
            unk_score=-math.inf,
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        unk = self.word_dict.get_index("<unk>")
        self._decoder = LexiconDecoder(options, trie, self.lm, SPACE_ID, BLANK_ID, unk, [], False)
        self._trie = trie  # the decoder holds it by reference

    def decode(self, logprobs: np.ndarray, hotwords: Sequence[str] = ()) -> tuple[str, list[WordSpan]]:
        """``hotwords`` are not supported by this decoder (pyctcdecode's beam search has them)."""
        emissions = np.ascontiguousarray(logprobs, dtype=np.float32)
        t, n = emissions.shape
        if not t:
            return "", []
        best = self._decoder.decode(emissions.ctypes.data, t, n)[0]
        words = [self.word_dict.get_entry(i) for i in best.words if i >= 0]
        tokens = list(best.tokens)
        path = tokens[1:-1] if len(tokens) == t + 2 else tokens[:t]
        spans: list[tuple[int, int]] = []
        first, last = -1, -1
        for frame, token in enumerate(path):  # word frames from the token path, as greedy's runs
            if token == SPACE_ID:
                if first >= 0:
                    spans.append((first, last))
                first = -1
            elif token != BLANK_ID:
                if first < 0:
                    first = frame
                last = frame + 1
        if first >= 0:
            spans.append((first, last))
        return " ".join(words), [(w, s, e) for w, (s, e) in zip(words, spans)]
