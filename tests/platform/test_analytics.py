"""Conversation analytics (``shared.platform.analytics``) on calls whose every figure is known."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.platform import analytics


def _phrase(channel: int, *words: tuple[float, float]) -> dict[str, Any]:
    return {
        "text": " ".join("слово" for _ in words),
        "start_time": words[0][0],
        "end_time": words[-1][1],
        "channel": channel,
        "words": [{"text": "слово", "start": s, "end": e} for s, e in words],
    }


# agent: 1.0-2.0 (two words, a 0.1 s gap), 5.0-6.0, then 8.0-9.0 and 9.2-9.8 (one monologue)
# client: 2.5-3.5 (two touching words), 5.5-7.0 (starts while the agent speaks)
CALL = [
    _phrase(0, (1.0, 1.5), (1.6, 2.0)),
    _phrase(1, (2.5, 3.0), (3.0, 3.5)),
    _phrase(0, (5.0, 6.0)),
    _phrase(1, (5.5, 7.0)),
    _phrase(0, (8.0, 9.0)),
    _phrase(0, (9.2, 9.8)),
]


def test_every_measure_of_a_stereo_call_whose_figures_are_known() -> None:
    a = analytics.compute(list(reversed(CALL)), duration=10.0, channels=2)  # order does not matter
    assert a["talk_time"] == {"0": 3.5, "1": 2.5}
    assert a["talk_share"] == {"0": 0.5833, "1": 0.4167}
    assert a["speech_time"] == 5.5
    assert a["overtalk_time"] == 0.5  # 5.5-6.0
    assert a["silence_time"] == 4.5
    assert a["longest_silence"] == 1.5  # 3.5-5.0
    assert a["interruptions"] == {"0": 0, "1": 1}
    # client replies 0.5 s after the agent's first phrase; the agent 1.5 s and 1.0 s after the client's
    assert a["reply_latency"] == {"0": 1.25, "1": 0.5}
    assert a["words"] == {"0": 5, "1": 3}
    assert a["speech_rate"] == {"0": 85.7, "1": 72.0}
    assert a["longest_monologue"] == {"0": 1.8, "1": 1.5}
    assert a["channels"] == 2 and a["duration"] == 10.0


def test_a_mono_recording_gets_the_channel_free_measures_only() -> None:
    mono = [{**p, "channel": 0} for p in CALL]
    a = analytics.compute(mono, duration=10.0, channels=1)
    assert a["speech_time"] == 5.5 and a["silence_time"] == 4.5 and a["longest_silence"] == 1.5
    assert a["words"] == {"0": 8} and a["speech_rate"] == {"0": 87.3}
    for name in ("overtalk_time", "talk_share", "interruptions", "reply_latency", "longest_monologue"):
        assert a[name] is None, name
    row = analytics.flat(a)
    assert row["talk_time_agent"] is None and row["words"] == 8 and row["speech_rate"] == 87.3


def test_silence_counts_the_start_and_the_end_and_an_empty_call_is_all_silence() -> None:
    a = analytics.compute([_phrase(0, (0.0, 1.0))], duration=4.0, channels=2)
    assert a["silence_time"] == 3.0 and a["longest_silence"] == 3.0
    assert a["reply_latency"] == {"0": None, "1": None} and a["talk_share"] == {"0": 1.0, "1": 0.0}
    empty = analytics.compute([], duration=7.25, channels=2)
    assert empty["silence_time"] == 7.25 and empty["longest_silence"] == 7.25
    assert empty["talk_share"] == {"0": None, "1": None} and empty["speech_rate"] == {"0": None, "1": None}


def test_flat_columns_name_each_side() -> None:
    row = analytics.flat(analytics.compute(CALL, duration=10.0, channels=2))
    assert tuple(row) == analytics.FLAT_COLUMNS
    assert row["talk_time_agent"] == 3.5 and row["interruptions_client"] == 1 and row["words"] == 8


def _on_grid(intervals: list[tuple[float, float]], duration: float) -> np.ndarray:
    """Speech as a boolean per millisecond: an independent way to measure the same figures."""
    grid = np.zeros(round(duration * 1000), bool)
    for s, e in intervals:
        grid[round(s * 1000) : round(e * 1000)] = True
    return grid


@pytest.mark.parametrize("client_lead", [1.2, 2.4])
def test_a_synthesized_call_transcribed_by_the_tone_model_gives_the_synthesizer_s_figures(
    recognizer: Any, tmp_path: Any, client_lead: float
) -> None:
    """A stereo call made by the tone synthesizer (word times known exactly) is transcribed by the
    engine; its analytics equal figures measured on a millisecond grid from the synthesizer's times."""
    import soundfile as sf

    from shared.dev.models.tones import synthesize

    agent, agent_expected = synthesize(["привет мир", "до свидания"], lead=0.6, pause=4.0)
    client, client_expected = synthesize(["как дела у вас"], lead=client_lead)
    audio = np.zeros((max(len(agent), len(client)), 2), np.int16)
    audio[: len(agent), 0] = agent
    audio[: len(client), 1] = client
    path = tmp_path / "call.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    duration = len(audio) / 8000

    transcript = recognizer.transcribe_file(path, channels="split")
    a = analytics.compute([p.to_dict() for p in transcript.phrases], duration, channels=2)

    agent_words = [(s, e) for p in agent_expected for _, s, e in p.words]
    client_words = [(s, e) for p in client_expected for _, s, e in p.words]
    g0, g1 = _on_grid(agent_words, duration), _on_grid(client_words, duration)
    assert a["talk_time"] == {"0": g0.sum() / 1000, "1": g1.sum() / 1000}
    assert a["overtalk_time"] == (g0 & g1).sum() / 1000
    assert a["silence_time"] == pytest.approx((~(g0 | g1)).sum() / 1000, abs=1e-3)
    assert a["words"] == {"0": 4, "1": 4}
    if client_lead == 1.2:  # the client starts inside the agent's "привет мир"
        assert a["overtalk_time"] > 0 and a["interruptions"] == {"0": 0, "1": 1}
    else:  # the client speaks in the agent's pause: a reply, then the agent replies
        assert a["overtalk_time"] == 0 and a["interruptions"] == {"0": 0, "1": 0}
        first_end = agent_expected[0].end
        assert a["reply_latency"]["1"] == round(client_expected[0].start - first_end, 3)
        assert a["reply_latency"]["0"] == round(agent_expected[1].start - client_expected[0].end, 3)


def test_the_search_text_is_the_display_text_when_a_phrase_has_one() -> None:
    from shared.platform.search import phrase_search_text

    assert phrase_search_text({"text": "ваш договор"}) == "ваш договор"
    assert phrase_search_text({"text": "ваш договор", "display": "Ваш договор."}) == "Ваш договор."
    assert phrase_search_text({"text": "ваш договор", "display": ""}) == "ваш договор"


def test_starting_in_a_pause_between_the_other_side_s_words_is_an_interruption() -> None:
    call = [_phrase(0, (1.0, 1.4), (1.6, 2.0)), _phrase(1, (1.5, 2.5))]
    a = analytics.compute(call, duration=3.0, channels=2)
    assert a["interruptions"] == {"0": 0, "1": 1}
    assert a["overtalk_time"] == 0.4  # 1.6-2.0: the pause itself is no overtalk
    assert a["reply_latency"] == {"0": None, "1": None}
