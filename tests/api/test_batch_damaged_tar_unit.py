"""Unit tests of one module, ``api.services.batch_sources``: a compressed tar with a damaged byte
inside a member is refused when it is listed (415 ``unsupported_archive``, the decompressor's
reason), where ``tarfile`` alone stopped at the end blocks and the member was extracted wrong (gzip)
or the request answered 500 (xz's ``LZMAError``); an intact one, record padding and all, lists."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from api.errors import ApiError
from api.services import batch_sources as sources
from shared.platform.settings import Settings

PACK: dict[str, Callable[[bytes], bytes]] = {
    "tar.gz": lambda raw: gzip.compress(raw, 1),
    "tar.bz2": bz2.compress,
    "tar.xz": lzma.compress,
}
# (bzip2 checks each block as it decompresses: there the first header already reads wrong)
WHY = {"tar.gz": "CRC check failed", "tar.bz2": "invalid header", "tar.xz": "Corrupt input data"}


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:  # padded to a whole 10 KiB record
        for i, seconds in enumerate((2.0, 3.0)):
            data = np.random.default_rng(i).normal(0, 2000, int(seconds * 8000)).astype(np.int16).tobytes()
            info = tarfile.TarInfo(f"calls/{i}.raw.wav")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(PACK))
def test_an_intact_compressed_tar_lists_and_a_damaged_one_is_refused(tmp_path: Path, kind: str) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    packed = PACK[kind](_tar())
    good = tmp_path / f"good.{kind}"
    good.write_bytes(packed)
    handle, entries = sources.list_archive(good, settings)
    handle.close()
    assert [(e.name, e.kind) for e in entries] == [("calls/0.raw.wav", "file"), ("calls/1.raw.wav", "file")]

    damaged = bytearray(packed)
    damaged[len(damaged) * 2 // 3] ^= 0xFF  # inside the second member's data
    bad = tmp_path / f"bad.{kind}"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ApiError) as refused:
        sources.list_archive(bad, settings)
    assert (refused.value.status, refused.value.code) == (415, "unsupported_archive")
    assert WHY[kind] in refused.value.message


def test_bytes_after_a_tar_gz_are_taken_as_gzip_and_tar_take_them(tmp_path: Path) -> None:
    """Trailing garbage (gzip(1): "trailing garbage ignored"), zeros, a second gzip member: listed."""
    settings = Settings(data_dir=tmp_path / "data")
    for i, tail in enumerate((b"\xf9\x03" + bytes(range(256)), bytes(1000), gzip.compress(b"hello"))):
        archive = tmp_path / f"{i}.tar.gz"
        archive.write_bytes(PACK["tar.gz"](_tar()) + tail)
        handle, entries = sources.list_archive(archive, settings)
        handle.close()
        assert len(entries) == 2


def test_an_xz_stream_padded_with_zeros_lists() -> None:
    """The .xz format allows null padding after a stream; Python's reader takes it for a cut one."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "padded.tar.xz"
        archive.write_bytes(PACK["tar.xz"](_tar()) + bytes(1000))
        handle, entries = sources.list_archive(archive, Settings(data_dir=Path(tmp) / "data"))
        handle.close()
        assert len(entries) == 2
