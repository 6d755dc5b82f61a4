"""The worker's batch follows the device: a GPU worker (TONE_PROVIDER=cuda) batches 256 recordings
unless TONE_WORKER_BATCH says otherwise; the CPU keeps 16. And TONE_ORT_SPINNING's modes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.platform.settings import CUDA_WORKER_BATCH, Settings


def test_worker_batch_follows_the_provider_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TONE_WORKER_BATCH", raising=False)
    monkeypatch.delenv("TONE_PROVIDER", raising=False)
    assert Settings().worker_batch == 16
    monkeypatch.setenv("TONE_PROVIDER", "cuda")
    assert Settings().worker_batch == CUDA_WORKER_BATCH == 256
    monkeypatch.setenv("TONE_WORKER_BATCH", "32")
    assert Settings().worker_batch == 32
    monkeypatch.setenv("TONE_PROVIDER", "cpu")
    monkeypatch.delenv("TONE_WORKER_BATCH")
    assert Settings().worker_batch == 16


def test_spinning_reads_the_flag_it_was_and_refuses_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    for given, mode in [
        ("1", "always"),
        ("true", "always"),
        ("0", "never"),
        ("off", "never"),
        ("steps", "steps"),
    ]:
        monkeypatch.setenv("TONE_ORT_SPINNING", given)
        assert Settings().ort_spinning == mode
    monkeypatch.setenv("TONE_ORT_SPINNING", "sometimes")
    with pytest.raises(ValidationError, match="ort_spinning"):
        Settings()
