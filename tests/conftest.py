"""Session fixtures: the test models are built by the project's own code, never checked in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT_AUDIO = ROOT.parent / "shared" / "audio"
CACHE = Path(os.environ.get("TONE_TEST_CACHE", ROOT / ".cache" / "test-models"))


@pytest.fixture(scope="session")
def tone_model() -> Path:
    """The recognizing test model (tones in, letters out, 0.33 s delay through state)."""
    from shared.devmodels.tones import build_tone_model

    return build_tone_model(CACHE / "tones")


@pytest.fixture(scope="session")
def recognizer(tone_model: Path):
    from shared.asr.engine import Recognizer

    return Recognizer.load(tone_model, threads=1)


@pytest.fixture(scope="session")
def cost_model() -> Path:
    """The cost-faithful model (T-one's compute, random float16 weights), cached between runs."""
    from shared.devmodels.cost import build_cost_model

    path = CACHE / "cost" / "model.onnx"
    if not path.is_file():
        build_cost_model(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
