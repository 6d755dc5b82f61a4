"""The ZIP local-header reader of ``api.services.archive_stream`` on its own: entries found as
their bytes arrive in pieces of any size, equal to what the central directory says; where it stops;
an entry's bytes read back from the partial file with their CRC checked."""

from __future__ import annotations

import io
import os
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from api.services.archive_stream import LocalEntry, LocalHeaders, _EntryReader


def _zip(files: list[tuple[str, bytes, int]], **kw: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in files:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if name.endswith("/"):
                zf.writestr(info, b"")
            else:
                with zf.open(info, "w", force_zip64=kw.get("zip64", False)) as f:
                    f.write(data)
    return buf.getvalue()


def _feed(raw: bytes, rng: random.Random) -> tuple[LocalHeaders, list[LocalEntry], list[int]]:
    """Fed in random pieces; each entry with how many bytes had arrived when it was reported."""
    headers, found, seen_at = LocalHeaders(), [], []
    i = 0
    while i < len(raw):
        n = rng.choice([1, 7, 30, 31, 100, 4096, 65536, 1 << 20])
        got = headers.feed(raw[i : i + n])
        i += len(raw[i : i + n])
        found += got
        seen_at += [i] * len(got)
    return headers, found, seen_at


def _drain(reader: _EntryReader) -> bytes:
    got = bytearray()
    while piece := reader.read(7000):
        got += piece
    return bytes(got)


FILES = [
    ("calls/", b"", zipfile.ZIP_STORED),
    ("calls/a.wav", os.urandom(50_000), zipfile.ZIP_STORED),
    ("calls/b.wav", b"RIFF" + b"\0" * 200_000, zipfile.ZIP_DEFLATED),
    ("звонки/в.wav", b"x" * 3, zipfile.ZIP_DEFLATED),
    ("empty.wav", b"", zipfile.ZIP_STORED),
    ("metadata.csv", "path,agent\ncalls/a.wav,Иван\n".encode(), zipfile.ZIP_DEFLATED),
]


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_entries_equal_the_central_directory_in_pieces_of_any_size(seed: int, zip64: bool) -> None:
    raw = _zip(FILES, zip64=zip64)
    headers, found, seen_at = _feed(raw, random.Random(seed))
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
    assert [(e.offset, e.name, e.crc, e.compressed, e.size, e.method) for e in found] == [
        (i.header_offset, i.filename, i.CRC, i.compress_size, i.file_size, i.compress_type) for i in infos
    ]
    assert headers.stopped == "the central directory"
    for e, at in zip(found, seen_at, strict=True):
        assert e.data_offset + e.compressed <= at  # reported only once its data is all in


def test_a_name_without_the_utf8_flag_is_read_as_russian_windows_writes_it() -> None:
    raw = bytearray(_zip([("abc.wav", b"data", zipfile.ZIP_STORED)]))
    name = "запись.wav".encode("cp866")
    # the same archive with a CP866 name of another length is easier built by hand: patch the
    # local header's name in place (same length) and clear the UTF-8 flag
    local = raw.index(b"PK\x03\x04")
    flags_at = local + 6
    struct.pack_into("<H", raw, flags_at, 0)
    short = name[:7]
    raw[local + 30 : local + 37] = short
    (entry,) = LocalHeaders().feed(bytes(raw))
    assert entry.name == short.decode("cp866")


@pytest.mark.parametrize(
    ("flags", "method", "why"),
    [
        (0x1, 8, "an encrypted entry"),
        (0x0, 12, "an entry compressed with method 12"),
    ],
)
def test_it_stops_at_what_it_cannot_follow(flags: int, method: int, why: str) -> None:
    first = _zip([("a.wav", b"a" * 1000, zipfile.ZIP_STORED)])
    raw = bytearray(_zip([("a.wav", b"a" * 1000, zipfile.ZIP_STORED), ("b.wav", b"b" * 10, 8)]))
    second = raw.index(b"PK\x03\x04", len(first) - 200)  # b.wav's local header
    struct.pack_into("<HH", raw, second + 6, flags, method)
    headers = LocalHeaders()
    found = headers.feed(bytes(raw))
    assert [e.name for e in found] == ["a.wav"]
    assert headers.stopped == why


def test_the_zip_reader_reads_no_tar_nor_anything_else() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a.wav")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    headers = LocalHeaders()
    assert headers.feed(buf.getvalue()) == []
    assert headers.stopped == "not a ZIP"


class _Pipe(io.RawIOBase):
    """Where zipfile writes as to a pipe: it cannot seek back, so every entry's sizes follow its data."""

    def __init__(self) -> None:
        self.out = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.out += b
        return len(b)


def _piped(files: list[tuple[str, bytes, int]], zip64: bool = False) -> bytes:
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w") as zf:  # type: ignore[arg-type]
        for name, data, method in files:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with zf.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
    return bytes(pipe.out)


PIPED = [(n, d, m) for n, d, m in FILES if not n.endswith("/")]  # stored and deflated alike


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_a_zip_written_to_a_pipe_is_followed_through_its_deflate_streams_and_stored_data(
    seed: int, zip64: bool
) -> None:
    raw = _piped(PIPED, zip64)
    headers, found, seen_at = _feed(raw, random.Random(seed))
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
    assert all(i.flag_bits & 0x8 for i in infos)
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    assert [(e.offset, e.name, e.crc, e.compressed, e.size, e.method) for e in found] == [
        (i.header_offset, i.filename, i.CRC, i.compress_size, i.file_size, i.compress_type) for i in infos
    ]
    assert headers.stopped == "the central directory"
    for e, at in zip(found, seen_at, strict=True):
        assert e.data_offset + e.compressed <= at


def _descriptor(data: bytes, wide: bool = False, signed: bool = True) -> bytes:
    crc = zipfile.crc32(data)  # type: ignore[attr-defined]
    body = struct.pack("<LQQ" if wide else "<LLL", crc, len(data), len(data))
    return (b"PK\x07\x08" if signed else b"") + body


def _stored_later(name: str, data: bytes, descriptor: bytes) -> bytes:
    """A stored entry whose sizes follow its data, built by hand (no ZIP64 field in its header)."""
    header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0x8, 0, 0, 0, 0, 0, 0, len(name), 0)
    return header + name.encode() + data + descriptor


@pytest.mark.parametrize("seed", range(3))
def test_a_stored_entry_ends_only_at_the_descriptor_that_matches_it(seed: int) -> None:
    """Signatures inside the data, even whole descriptors with the wrong CRC or sizes, are data;
    8-byte sizes with no ZIP64 field (Go's entries of 4 GiB or more) end it too."""
    rng = random.Random(seed)
    head = rng.randbytes(3000)
    lookalikes = head + b"PK\x07\x08" + rng.randbytes(40)  # a bare signature
    lookalikes += (
        _descriptor(lookalikes) + b"RIFF"
    )  # a whole descriptor of the bytes before it, no header after
    wrong_crc = (zipfile.crc32(lookalikes) + 1) & 0xFFFFFFFF  # type: ignore[attr-defined]
    lookalikes += b"PK\x07\x08" + struct.pack("<LLL", wrong_crc, len(lookalikes), len(lookalikes))
    lookalikes += b"PK\x03\x04" + rng.randbytes(100) + b"PK\x07\x08"  # a header after it; one at the end
    wide = rng.randbytes(5000)
    raw = (
        _stored_later("a.wav", lookalikes, _descriptor(lookalikes))
        + _stored_later("b.wav", wide, _descriptor(wide, wide=True))
        + _stored_later("c.wav", b"", _descriptor(b""))
        + b"PK\x01\x02"
        + bytes(60)
    )
    headers, found, seen_at = _feed(raw, rng)
    assert [(e.name, e.size, e.compressed, e.crc, e.method) for e in found] == [
        (n, len(d), len(d), zipfile.crc32(d), zipfile.ZIP_STORED)  # type: ignore[attr-defined]
        for n, d in (("a.wav", lookalikes), ("b.wav", wide), ("c.wav", b""))
    ]
    b_at = 30 + 5 + len(lookalikes) + 16
    c_at = b_at + 30 + 5 + len(wide) + 24  # its descriptor's sizes 8 bytes each
    assert [(e.offset, e.data_offset) for e in found] == [(0, 35), (b_at, b_at + 35), (c_at, c_at + 35)]
    assert headers.stopped == "the central directory"
    for e, at in zip(found, seen_at, strict=True):
        assert e.data_offset + e.compressed <= at


def test_a_stored_entry_it_cannot_end_is_not_reported_nor_anything_after_it() -> None:
    data = os.urandom(2000)
    unsigned = LocalHeaders()  # a descriptor without its signature: nothing marks the end
    assert unsigned.feed(_stored_later("a.wav", data, _descriptor(data, signed=False)) + _zip(FILES)) == []
    assert unsigned.stopped is None

    many = b"PK\x07\x08" * 1500
    made_of_them = LocalHeaders()
    assert made_of_them.feed(_stored_later("a.wav", many, _descriptor(many)) + b"PK\x01\x02") == []
    assert made_of_them.stopped == "a stored entry whose data holds many descriptor signatures"


def test_a_piped_entry_lying_in_its_descriptor_or_too_expanding_stops_the_reader() -> None:
    raw = bytearray(_piped([("a.wav", os.urandom(5000), zipfile.ZIP_DEFLATED), ("b.wav", b"b", 8)]))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        a = zf.infolist()[0]
    descriptor = raw.index(b"PK\x07\x08", a.header_offset + 30)
    raw[descriptor + 4] ^= 0xFF  # its CRC
    lying = LocalHeaders()
    assert lying.feed(bytes(raw)) == []
    assert lying.stopped == "a data descriptor that does not match its data"

    bomb = LocalHeaders()
    assert bomb.feed(_piped([("a.wav", bytes(50_000_000), zipfile.ZIP_DEFLATED)])) == []
    assert bomb.stopped == "an entry that expands too much to follow"


def test_an_entry_is_read_back_from_the_file_and_its_crc_checked(tmp_path: Path) -> None:
    raw = _zip(FILES)
    path = tmp_path / "a.zip"
    path.write_bytes(raw)
    found = LocalHeaders().feed(raw)
    fd = os.open(path, os.O_RDONLY)
    try:
        for e, (_, data, _) in zip(found, FILES, strict=True):
            assert _drain(_EntryReader(fd, e)) == data
        # the same header over other bytes: the CRC catches it
        stored = found[1]
        corrupt = bytearray(raw)
        corrupt[stored.data_offset + 10] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        reader = _EntryReader(fd, stored)
        with pytest.raises(zipfile.BadZipFile, match="does not match its header"):
            _drain(reader)
    finally:
        os.close(fd)
