"""Every telephony format and sample rate, through the whole engine, with exact transcripts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from shared.asr.engine import Recognizer
from shared.asr.errors import AudioError
from shared.dev.models.tones import synthesize
from tests.conftest import KIT_AUDIO

PHRASES = ["алло слушаю вас", "номер договора семь восемь девять"]
AUDIO, EXPECTED = synthesize(PHRASES, amplitude=9000)

# (file name, sample rate, libsndfile format, subtype, time tolerance in seconds)
CASES = [
    ("pcm.wav", 8000, "WAV", "PCM_16", 0.0),
    ("ulaw.wav", 8000, "WAV", "ULAW", 0.0),
    ("alaw.wav", 8000, "WAV", "ALAW", 0.0),
    ("gsm.wav", 8000, "WAV", "GSM610", 0.07),
    ("pcm.flac", 8000, "FLAC", "PCM_16", 0.0),
    ("wide.flac", 44100, "FLAC", "PCM_16", 0.07),
    ("voice.mp3", 16000, "MP3", "MPEG_LAYER_III", 0.07),
    ("voice.ogg", 16000, "OGG", "VORBIS", 0.07),
    ("voice.opus", 48000, "OGG", "OPUS", 0.07),
    ("float.wav", 22050, "WAV", "FLOAT", 0.07),
]


def at_rate(rate: int) -> np.ndarray:
    x = AUDIO.astype(np.float32) / 32768
    return x if rate == 8000 else soxr.resample(x, 8000, rate, quality="VHQ")


def assert_matches(phrases: list, tolerance: float) -> None:
    assert [p.text for p in phrases] == PHRASES
    for got, want in zip(phrases, EXPECTED):
        assert got.start == pytest.approx(want.start, abs=tolerance + 1e-9)
        assert got.end == pytest.approx(want.end, abs=tolerance + 1e-9)


@pytest.mark.parametrize(("name", "rate", "fmt", "subtype", "tolerance"), CASES, ids=[c[0] for c in CASES])
def test_every_libsndfile_format_transcribes_exactly(
    recognizer: Recognizer, tmp_path: Path, name: str, rate: int, fmt: str, subtype: str, tolerance: float
) -> None:
    path = tmp_path / name
    sf.write(path, at_rate(rate), rate, format=fmt, subtype=subtype)
    assert_matches(list(recognizer.transcribe(str(path))), tolerance)


@pytest.mark.parametrize(
    ("container", "codec", "rate"), [("mp4", "aac", 16000), ("matroska", "libopus", 48000)]
)
def test_ffmpeg_only_containers_transcribe(
    recognizer: Recognizer, tmp_path: Path, container: str, codec: str, rate: int
) -> None:
    path = tmp_path / f"voice.{'m4a' if container == 'mp4' else 'mka'}"
    samples = at_rate(rate)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)  # so priming is marked
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert_matches(list(recognizer.transcribe(str(path))), 0.07)


def test_stereo_file_split_and_mixed(recognizer: Recognizer, tmp_path: Path) -> None:
    other, _ = synthesize(["да"], lead=len(AUDIO) / 8000 + 0.3)
    n = max(len(AUDIO), len(other))
    stereo = np.stack([np.pad(AUDIO, (0, n - len(AUDIO))), np.pad(other, (0, n - len(other)))], axis=1)
    path = tmp_path / "call.wav"
    sf.write(path, stereo, 8000, subtype="ULAW")
    split = recognizer.transcribe_file(str(path), channels="split")
    assert [(p.channel, p.text) for p in split.phrases] == [(0, PHRASES[0]), (0, PHRASES[1]), (1, "да")]
    assert split.channels == 2
    mixed = recognizer.transcribe_file(str(path), channels="mix")
    assert [p.text for p in mixed.phrases] == [*PHRASES, "да"]
    assert {p.channel for p in mixed.phrases} == {0}


@pytest.mark.parametrize("name", sorted(p.name for p in (KIT_AUDIO / "bad").iterdir()))
def test_bad_files_raise_typed_errors_and_the_batch_goes_on(recognizer: Recognizer, name: str) -> None:
    with pytest.raises(AudioError) as err:
        recognizer.transcribe_file(str(KIT_AUDIO / "bad" / name))
    assert err.value.code in {"empty_audio", "unsupported_format", "corrupt_audio"}
    assert err.value.message
    errors: dict[int, Exception] = {}
    good = KIT_AUDIO / "agent_8k_alaw.wav"
    done = dict(recognizer.transcribe_many([str(good), str(KIT_AUDIO / "bad" / name), str(good)], batch=4,
                                           on_error=errors.__setitem__))  # fmt: skip
    assert sorted(done) == [0, 2]
    assert list(errors) == [1]
    assert done[0].duration == pytest.approx(5.52, abs=0.05)


def test_duration_limit_is_enforced(recognizer: Recognizer, tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(8000 * 30, np.int16), 8000)
    with pytest.raises(AudioError) as err:
        recognizer.transcribe_file(str(path), max_duration=10)
    assert err.value.code == "audio_too_long"
