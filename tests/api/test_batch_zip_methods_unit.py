"""Unit tests of one module, ``api.services.batch_sources``: ZIP entries whose bytes cannot be read,
password-protected or compressed with a method ``zipfile`` lacks (Windows' compressed folders write
Deflate64 for large files), are skipped with their reason; one whose data does not decompress as its
method says refuses the archive as a damaged one; a metadata.csv Python's CSV reader refuses is one
skip, with no metadata. All of them answered 500 before."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from api.errors import ApiError
from api.services import batch_sources as sources
from shared.platform.settings import Settings


def _wav(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    audio = np.random.default_rng(seed).normal(0, 2000, int(seconds * 8000)).astype(np.int16)
    sf.write(buf, audio, 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _patch(raw: bytes, name: str, *, method: int | None = None, flags: int = 0) -> bytes:
    """``name``'s method (and flags, or-ed in) set in its local header and its directory entry."""
    out = bytearray(raw)
    for signature, at, name_at, length_at in ((b"PK\x03\x04", 0, 30, 26), (b"PK\x01\x02", 2, 46, 28)):
        i = out.find(signature)
        while i >= 0:
            n = struct.unpack_from("<H", out, i + length_at)[0]
            if bytes(out[i + name_at : i + name_at + n]) == name.encode():
                struct.pack_into("<H", out, i + 6 + at, struct.unpack_from("<H", out, i + 6 + at)[0] | flags)
                if method is not None:
                    struct.pack_into("<H", out, i + 8 + at, method)
            i = out.find(signature, i + 4)
    return bytes(out)


def _archive(
    tmp_path: Path, patches: dict[str, dict[str, int]], methods: dict[str, int] | None = None
) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, name in enumerate(["calls/a.wav", "calls/b.wav", "calls/c.wav", "calls/d.wav", "calls/e.wav"]):
            zf.writestr(
                name, _wav(1.0 + i / 10, i), compress_type=(methods or {}).get(name, zipfile.ZIP_DEFLATED)
            )
        zf.writestr("metadata.csv", "path,agent\ncalls/a.wav,ivan\n")
    raw = buf.getvalue()
    for name, patch in patches.items():
        raw = _patch(raw, name, **patch)
    path = tmp_path / "calls.zip"
    path.write_bytes(raw)
    return path


def _collect(archive: Path, tmp_path: Path) -> tuple[list[str], list[dict[str, str]], dict]:
    settings = Settings(data_dir=tmp_path / "data")
    handle, entries = sources.list_archive(archive, settings)
    with handle:
        items, skipped, meta = sources.collect(entries, settings, sources.extracted(settings))
    return [i.name for i in items], skipped, meta


def test_password_protected_and_unknown_method_entries_are_skipped_with_their_reason(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path,
        {
            "calls/b.wav": {"flags": 0x1},  # ZipCrypto
            "calls/c.wav": {"method": 99, "flags": 0x1},  # WinZip AES
            "calls/d.wav": {"method": 9},  # Deflate64
            "calls/e.wav": {"method": 93},  # Zstandard
            "metadata.csv": {"flags": 0x1},
        },
    )
    names, skipped, meta = _collect(archive, tmp_path)
    assert names == ["calls/a.wav"]
    password = "encrypted: the entry is password-protected; send the archive without a password"
    assert skipped == [
        {"name": "calls/b.wav", "reason": password},
        {"name": "calls/c.wav", "reason": password},
        {
            "name": "calls/d.wav",
            "reason": "unsupported_compression: method 9 (Deflate64); store or deflate it (any ZIP tool's "
            "default) and send it again",
        },
        {
            "name": "calls/e.wav",
            "reason": "unsupported_compression: method 93 (Zstandard); store or deflate it (any ZIP tool's "
            "default) and send it again",
        },
        {"name": "metadata.csv", "reason": password},
    ]
    assert meta == {}  # its metadata could not be read: none attached, and the skip says why


def test_bzip2_and_lzma_entries_are_read_and_their_damaged_data_refuses_the_archive(tmp_path: Path) -> None:
    methods = {"calls/b.wav": zipfile.ZIP_BZIP2, "calls/c.wav": zipfile.ZIP_LZMA}
    names, skipped, _ = _collect(_archive(tmp_path, {}, methods), tmp_path)
    assert names == ["calls/a.wav", "calls/b.wav", "calls/c.wav", "calls/d.wav", "calls/e.wav"]
    assert skipped == []
    before = set((tmp_path / "data").rglob("*.wav"))  # the readable archive's recordings
    for name in methods:  # a byte of the compressed data flipped: bz2 and lzma each raise their own
        archive = _archive(tmp_path, {}, methods)
        raw = bytearray(archive.read_bytes())
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(name)
        local = info.header_offset
        n, m = struct.unpack_from("<HH", raw, local + 26)
        raw[local + 30 + n + m + info.compress_size // 2] ^= 0xFF
        archive.write_bytes(bytes(raw))
        with pytest.raises(ApiError) as refused:
            _collect(archive, tmp_path)
        assert (refused.value.status, refused.value.code) == (400, "archive_bomb")
        assert f"the entry {name!r} does not match its headers" in refused.value.message
        assert set((tmp_path / "data").rglob("*.wav")) == before  # nothing it extracted is left


@pytest.mark.parametrize(
    ("csv_bytes", "why"),
    [
        (b"path,agent\n" + b"a\rb" * 10 + bytes(range(256)) * 4, "new-line character seen in unquoted field"),
        (b"path,agent\na.wav," + b"x" * 200_000 + b"\n", "field larger than field limit"),
    ],
)
def test_a_metadata_csv_python_cannot_read_is_one_skip_and_no_metadata(
    tmp_path: Path, csv_bytes: bytes, why: str
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.wav", _wav(1.0, 1))
        zf.writestr("metadata.csv", csv_bytes)
    archive = tmp_path / "calls.zip"
    archive.write_bytes(buf.getvalue())
    names, skipped, meta = _collect(archive, tmp_path)
    assert (names, meta) == (["a.wav"], {})
    assert [s["name"] for s in skipped] == ["metadata.csv"]
    assert skipped[0]["reason"].startswith("invalid_metadata: metadata.csv cannot be read as a CSV table (")
    assert why in skipped[0]["reason"]
