"""Decoding, channels, scaling, resampling, limits and refusals of shared.asr.audio."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from shared.asr.audio import (
    TARGET_RATE,
    RawEncoding,
    decode_raw,
    open_audio,
    probe,
    read_audio,
    resample,
)
from shared.asr.errors import (
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    UnsupportedFormatError,
)

AUDIO = Path(__file__).resolve().parents[3] / "shared" / "audio"

# From shared/audio/README.md: file, seconds, channels.
RECORDINGS = [
    ("tone_example_short.flac", 6.36, 1),
    ("tone_example_long.flac", 50.76, 1),
    ("call_stereo_8k_ulaw.wav", 13.02, 2),
    ("agent_8k_alaw.wav", 5.52, 1),
    ("agent_8k_gsm.wav", 5.52, 1),
    ("agent_16k.mp3", 5.52, 1),
    ("agent_16k.ogg", 5.52, 1),
    ("agent_8k.m4a", 5.5, 1),
    ("client_48k.opus", 4.17, 1),
    ("client_44k_stereo.flac", 4.17, 2),
]

BAD = [
    ("empty.wav", EmptyAudioError),
    ("zero_samples.wav", EmptyAudioError),
    ("noise_bytes.wav", UnsupportedFormatError),
    ("text.mp3", UnsupportedFormatError),
    ("truncated.wav", CorruptAudioError),
    ("lying_header.wav", CorruptAudioError),
]

rng = np.random.default_rng(20240601)


def _noise(frames: int, channels: int = 1) -> np.ndarray:
    return rng.integers(-32768, 32768, size=(frames, channels), dtype=np.int16)


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# --- the recordings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "seconds", "channels"), RECORDINGS)
def test_recordings_decode_to_their_duration_and_channels(name: str, seconds: float, channels: int) -> None:
    path = AUDIO / name
    info = probe(path)
    assert info.channels == channels
    assert info.backend == ("ffmpeg" if name.endswith(".m4a") else "sndfile")
    assert info.duration == pytest.approx(seconds, abs=0.05)

    mono = read_audio(path)
    split = read_audio(path, channels="split")
    assert mono.dtype == split.dtype == np.int16
    assert mono.shape[1] == 1
    assert split.shape[1] == channels
    assert len(mono) == len(split)
    assert len(mono) / TARGET_RATE == pytest.approx(seconds, abs=0.05)
    assert np.abs(mono).max() > 1000  # speech, not silence


def test_m4a_goes_through_ffmpeg_from_a_file_object() -> None:
    with (AUDIO / "agent_8k.m4a").open("rb") as file, open_audio(file) as reader:
        assert reader.info.backend == "ffmpeg"
        assert reader.info.codec == "aac"
        assert reader.info.format == "m4a"
        assert sum(len(block) for block in reader) == pytest.approx(5.5 * TARGET_RATE, abs=400)


def test_stereo_call_keeps_agent_and_client_apart() -> None:
    call = read_audio(AUDIO / "call_stereo_8k_ulaw.wav", channels="split").astype(np.int32)
    head = slice(int(1.0 * TARGET_RATE), int(6.0 * TARGET_RATE))  # the agent talks, the client not yet
    assert np.abs(call[head, 0]).max() > 1000
    assert np.abs(call[head, 1]).max() < np.abs(call[head, 0]).max() / 10


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "error"), BAD)
def test_bad_files_raise_typed_errors(name: str, error: type[AudioError]) -> None:
    with pytest.raises(error) as caught:
        read_audio(AUDIO / "bad" / name)
    assert type(caught.value) is error
    assert caught.value.message.strip()
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize(("name", "error"), BAD)
def test_bad_file_objects_raise_typed_errors(name: str, error: type[AudioError]) -> None:
    with pytest.raises(error):
        read_audio(io.BytesIO((AUDIO / "bad" / name).read_bytes()))


def test_messages_say_what_is_wrong() -> None:
    with pytest.raises(CorruptAudioError, match=r"truncated: header declares 208266 bytes .* holds 2942"):
        read_audio(AUDIO / "bad" / "truncated.wav")
    with pytest.raises(UnsupportedFormatError, match=r"\.mp3.*b'this is not.*libsndfile or FFmpeg"):
        probe(AUDIO / "bad" / "text.mp3")


def test_a_headerless_raw_file_is_an_unsupported_format_not_a_crash(tmp_path: Path) -> None:
    """libsndfile takes a ``.raw`` name for its headerless format and asks for a rate
    (soundfile's ``TypeError``: a job's ``internal_error`` before); FFmpeg cannot guess one either."""
    path = tmp_path / "call.raw"
    path.write_bytes(_noise(8000).tobytes())
    with pytest.raises(
        UnsupportedFormatError, match=r"\.raw.*headerless raw file: its sample rate and encoding"
    ):
        probe(path)
    with pytest.raises(UnsupportedFormatError):
        read_audio(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_audio(tmp_path / "nowhere.wav")


def test_truncated_flac_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    sf.write(path, _noise(8000 * 10), 8000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptAudioError, match="libsndfile"):
        read_audio(path)


def test_ffmpeg_error_mid_file_is_corrupt() -> None:
    data = (AUDIO / "agent_8k.m4a").read_bytes()
    middle = len(data) // 2
    garbage = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptAudioError, match="FFmpeg failed after"):
        read_audio(io.BytesIO(data[:middle] + garbage + data[middle + 2000 :]))


def test_streaming_riff_size_reads_to_the_end(tmp_path: Path) -> None:
    samples = _noise(8000)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 8000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    np.testing.assert_array_equal(read_audio(io.BytesIO(bytes(data))), samples)


# --- exactness, channels, scaling ----------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16")])
def test_8k_int16_mono_passes_through_bit_exactly(tmp_path: Path, fmt: str, subtype: str) -> None:
    samples = _noise(8000 * 3)
    path = tmp_path / f"noise.{fmt.lower()}"
    sf.write(path, samples, 8000, format=fmt, subtype=subtype)
    np.testing.assert_array_equal(read_audio(path), samples)
    np.testing.assert_array_equal(read_audio(io.BytesIO(path.read_bytes())), samples)


@pytest.mark.parametrize("subtype", ["ULAW", "ALAW"])
def test_g711_wav_passes_through_libsndfile_samples(tmp_path: Path, subtype: str) -> None:
    path = tmp_path / "g711.wav"
    sf.write(path, _noise(8000 * 2), 8000, subtype=subtype)
    np.testing.assert_array_equal(read_audio(path), sf.read(path, dtype="int16", always_2d=True)[0])


def test_split_keeps_channels_apart_and_mix_is_the_mean(tmp_path: Path) -> None:
    left = (_sine(440, 8000, 2) * 32767).astype(np.int16)
    right = _noise(len(left))[:, 0] // 4
    stereo = np.stack([left, right], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 8000, subtype="PCM_16")

    split = read_audio(path, channels="split")
    np.testing.assert_array_equal(split, stereo)
    mono = read_audio(path)
    mean = (left.astype(np.float64) + right) / 2
    assert np.abs(mono[:, 0] - mean).max() <= 0.5


def test_split_channels_stay_apart_through_resampling(tmp_path: Path) -> None:
    stereo = np.stack([_sine(500, 44100, 2), _sine(1500, 44100, 2)], axis=1)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    split = read_audio(path, channels="split")
    assert split.shape == (16000, 2)
    assert _peak_hz(split[:, 0], 8000) == pytest.approx(500, abs=5)
    assert _peak_hz(split[:, 1], 8000) == pytest.approx(1500, abs=5)


def test_float_samples_are_scaled_to_int16(tmp_path: Path) -> None:
    values = np.array([0.0, 0.5, -0.25, 1.0, -1.0, 1.5, -1.5, 1 / 32768, 0.4 / 32768, 0.6 / 32768])
    path = tmp_path / "float.wav"
    sf.write(path, values, 8000, subtype="FLOAT")
    expected = [0, 16384, -8192, 32767, -32768, 32767, -32768, 1, 0, 1]
    assert read_audio(path)[:, 0].tolist() == expected


def test_float_stereo_mix_is_the_mean(tmp_path: Path) -> None:
    stereo = np.array([[0.5, 0.25], [-1.0, 1.0], [0.75, 0.75], [-0.5, -0.25]])
    path = tmp_path / "float_stereo.wav"
    sf.write(path, stereo, 8000, subtype="FLOAT")
    assert read_audio(path)[:, 0].tolist() == [12288, 0, 24576, -12288]


# --- resampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_resampled_sine_has_the_right_length_and_frequency(tmp_path: Path, rate: int) -> None:
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, _sine(1000, rate, 3.0), rate, subtype="PCM_16")
    out = read_audio(path)
    assert out.dtype == np.int16
    assert len(out) == pytest.approx(3.0 * TARGET_RATE, abs=1)
    assert _peak_hz(out[:, 0], TARGET_RATE) == pytest.approx(1000, abs=2)
    assert np.abs(out[4000:-4000]).max() == pytest.approx(0.5 * 32768, rel=0.01)

    direct = resample((_sine(1000, rate, 3.0) * 32767).astype(np.int16), rate)
    assert len(direct) == pytest.approx(3.0 * TARGET_RATE, abs=1)
    assert _peak_hz(direct, TARGET_RATE) == pytest.approx(1000, abs=2)


def test_block_wise_resampling_equals_one_shot(tmp_path: Path) -> None:
    source = (np.stack([_sine(700, 44100, 5.0), _sine(2100, 44100, 5.0)], axis=1) * 32767).astype(np.int16)
    path = tmp_path / "sine.wav"
    sf.write(path, source, 44100, subtype="PCM_16")
    with open_audio(path, channels="split", block_seconds=0.37) as reader:
        blocks = list(reader)
    assert len(blocks) > 10
    streamed = np.concatenate(blocks)
    one_shot = resample(source, 44100)
    assert streamed.shape == one_shot.shape == (40000, 2)
    assert np.abs(streamed.astype(np.int32) - one_shot).max() <= 1


def test_resample_is_identity_at_the_same_rate() -> None:
    samples = _noise(1000)
    np.testing.assert_array_equal(resample(samples, 8000), samples)
    with pytest.raises(TypeError):
        resample(samples.astype(np.float32), 16000)


def test_long_file_is_decoded_block_by_block(tmp_path: Path) -> None:
    minutes, rate, block_seconds = 20, 48000, 30.0
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        chunk = _noise(rate * 60)
        for _ in range(minutes):
            out.write(chunk)
    total, count = 0, 0
    with open_audio(path, block_seconds=block_seconds) as reader:
        assert reader.info.duration == minutes * 60
        for block in reader:
            assert block.dtype == np.int16
            assert block.shape[1] == 1
            assert len(block) <= block_seconds * TARGET_RATE
            total += len(block)
            count += 1
    assert count == minutes * 60 / block_seconds
    assert total == minutes * 60 * TARGET_RATE


def test_ffmpeg_backend_resamples_and_trims_encoder_padding(tmp_path: Path) -> None:
    path = tmp_path / "stereo.mp4"
    stereo = np.stack([_sine(600, 16000, 2.0), _sine(1800, 16000, 2.0)])
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000, layout="stereo")
        for start in range(0, stereo.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            frame.rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.backend, info.sample_rate, info.channels) == ("ffmpeg", 16000, 2)
    split = read_audio(path, channels="split")
    assert split.shape[1] == 2
    # The decoder yields whole 1024-sample AAC frames; what lies past the declared length is padding.
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert len(split) == pytest.approx(info.duration * TARGET_RATE, abs=2)
    assert _peak_hz(split[:, 0], TARGET_RATE) == pytest.approx(600, abs=5)
    assert _peak_hz(split[:, 1], TARGET_RATE) == pytest.approx(1800, abs=5)


# --- limits --------------------------------------------------------------------------------------


def test_max_bytes() -> None:
    path = AUDIO / "agent_8k_alaw.wav"
    with pytest.raises(AudioTooLargeError, match="44192 bytes"):
        open_audio(path, max_bytes=44191)
    assert len(read_audio(path, max_bytes=44192)) > 0


def test_max_duration_from_the_header() -> None:
    with pytest.raises(AudioTooLongError, match=r"50\.76 s"):
        open_audio(AUDIO / "tone_example_long.flac", max_duration=50)
    assert len(read_audio(AUDIO / "tone_example_long.flac", max_duration=51)) == 406080


def test_max_duration_while_decoding_a_header_without_length(tmp_path: Path) -> None:
    """A streamed FLAC (STREAMINFO total_samples = 0) says nothing of its length up front."""
    buffer = io.BytesIO()
    sf.write(buffer, _noise(8000 * 60), 8000, format="FLAC")
    data = bytearray(buffer.getvalue())
    at = 8 + 10  # STREAMINFO: rate (20 bits), channels (3), bits (5), total samples (36)
    fields = int.from_bytes(data[at : at + 8], "big") & ~((1 << 36) - 1)
    data[at : at + 8] = fields.to_bytes(8, "big")
    path = tmp_path / "streamed.flac"
    path.write_bytes(bytes(data))

    assert probe(path).duration == 0.0  # FFmpeg reads it; libsndfile cannot read such a file to its end
    decoded = 0
    with open_audio(path, max_duration=10, block_seconds=4) as reader, pytest.raises(AudioTooLongError):  # noqa: PT012
        for block in reader:
            decoded += len(block)
    assert decoded <= (10 + 4) * TARGET_RATE
    assert len(read_audio(path)) == 8000 * 60


# --- raw streams ---------------------------------------------------------------------------------


def test_decode_raw_known_values() -> None:
    pcm = decode_raw(np.array([0, 1, -1, 32767, -32768], dtype="<i2").tobytes(), encoding="pcm_s16le")
    assert pcm.dtype == np.int16
    assert pcm[:, 0].tolist() == [0, 1, -1, 32767, -32768]
    assert decode_raw(bytes([0xFF, 0x7F, 0x00, 0x80]), encoding="mulaw")[:, 0].tolist() == [
        0,
        0,
        -32124,
        32124,
    ]
    assert decode_raw(bytes([0xD5, 0x55, 0x2A, 0xAA]), encoding="alaw")[:, 0].tolist() == [
        8,
        -8,
        -32256,
        32256,
    ]
    stereo = decode_raw(np.array([1, 2, 3, 4], dtype="<i2").tobytes(), encoding="pcm_s16le", channels=2)
    assert stereo.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(("encoding", "subtype"), [("mulaw", "ULAW"), ("alaw", "ALAW")])
def test_decode_raw_g711_matches_libsndfile(encoding: RawEncoding, subtype: str) -> None:
    codes = bytes(range(256))
    wav = io.BytesIO()
    sf.write(wav, np.zeros(256, np.int16), 8000, format="WAV", subtype=subtype)
    data = bytearray(wav.getvalue())
    data[-256:] = codes  # every G.711 code, decoded by libsndfile
    expected = sf.read(io.BytesIO(bytes(data)), dtype="int16", always_2d=True)[0]
    np.testing.assert_array_equal(decode_raw(codes, encoding=encoding), expected)


def test_decode_raw_refuses_partial_frames() -> None:
    with pytest.raises(CorruptAudioError, match="trailing"):
        decode_raw(b"\x00\x01\x02", encoding="pcm_s16le")
    with pytest.raises(CorruptAudioError):
        decode_raw(b"\x00\x01\x02", encoding="mulaw", channels=2)
    assert decode_raw(b"", encoding="alaw").shape == (0, 1)
