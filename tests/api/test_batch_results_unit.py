"""The results files' conventions, without servers: a streamed ZIP member may pass 2 GiB (ZIP64)."""

from __future__ import annotations

import io
import zipfile

import pytest

from api.services.batch_results import open_member


def test_a_streamed_member_may_grow_past_the_zip64_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile refuses a member opened for writing without force_zip64 once it passes ZIP64_LIMIT
    (2 GiB); the limit is lowered here so that the test writes kilobytes, not gigabytes."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    data = b"x" * 5000
    plain = zipfile.ZipFile(io.BytesIO(), "w")
    with pytest.raises(RuntimeError, match="zip64"), plain.open("results.jsonl", "w") as out:
        out.write(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, open_member(zf, "results.jsonl") as out:
        out.write(data)
    monkeypatch.undo()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.read("results.jsonl") == data
