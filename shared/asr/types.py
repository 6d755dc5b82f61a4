"""Plain result types of the engine: frozen dataclasses, not dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SAMPLE_RATE = 8000  # the model's rate: every other 8000 in the project is this one
ChannelMode = Literal["mix", "split"]  # mix to mono, or each channel its own stream
CHUNK_SAMPLES = 2400  # 300 ms of 8 kHz audio: one model call per stream
PADDING_SAMPLES = 2400  # the reference pads 300 ms of zeros before and after the audio
FRAMES_PER_CHUNK = 10
FRAME_SECONDS = 0.03
MEAN_TIME_BIAS = 0.33  # the model's mean output delay, seconds
STATE_SIZE = 219_729
LABELS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя "  # 33 letters and the space; index 34 is the CTC blank
VOCAB_SIZE = len(LABELS) + 1
SPACE_ID = len(LABELS) - 1
BLANK_ID = len(LABELS)


def frame_to_seconds(frame: int) -> float:
    """The reference pipeline's timestamp of an absolute output frame, before clamping at 0."""
    return round(frame * FRAME_SECONDS - MEAN_TIME_BIAS - PADDING_SAMPLES / SAMPLE_RATE, 2)


@dataclass(frozen=True)
class Word:
    """A word with its start and end in seconds, from the CTC alignment."""

    text: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Phrase:
    """A phrase the splitter closed: its text, start and end in seconds, channel and words."""

    text: str
    start: float
    end: float
    channel: int = 0
    words: tuple[Word, ...] = field(default_factory=tuple)
    start_frame: int = field(default=0, compare=False, repr=False)
    end_frame: int = field(default=0, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start_time": self.start,
            "end_time": self.end,
            "channel": self.channel,
            "words": [w.to_dict() for w in self.words],
        }
