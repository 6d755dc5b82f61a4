"""The tar and tar.gz followers of ``api.services.archive_stream`` on their own: members found as
their bytes arrive in pieces of any size, equal to what :mod:`tarfile` reads from the whole archive
(ustar, GNU and pax, long and Russian names, links, a FIFO, concatenated gzip members); a tar.gz's
members read back from its sidecar; where following stops (the end, a damaged header, a sparse
member, a global header that renames, a bomb)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from api.errors import ApiError
from api.schemas import BatchOptions
from api.services import batch_sources as sources
from api.services.archive_stream import (
    EarlyArchive,
    LocalHeaders,
    PackedTar,
    TarEntry,
    TarHeaders,
    _Read,
    follower,
)
from shared.platform.settings import Settings

PIECES = [1, 7, 100, 511, 512, 513, 4096, 65536, 1 << 20]
# the compressed tars followed as they arrive: how each is written, and its first bytes
PACKERS = {
    "tar.gz": (lambda raw: gzip.compress(raw, 1), b"\x1f\x8b"),
    "tar.bz2": (bz2.compress, b"BZh"),
    "tar.xz": (lambda raw: lzma.compress(raw, lzma.FORMAT_XZ), b"\xfd7zXZ\x00"),
}


def _tar(fmt: int, members: list[tuple[str, bytes | str | None, bytes]], **kw: object) -> bytes:
    """``(name, type, data)``: type a tarfile type, or a str for a link's target (type SYMTYPE)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(kind, str):
                info.type, info.linkname = tarfile.SYMTYPE, kind
            else:
                info.type = kind or tarfile.REGTYPE
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


MEMBERS: list[tuple[str, bytes | str | None, bytes]] = [
    ("calls", tarfile.DIRTYPE, b""),
    ("calls/a.wav", None, os.urandom(50_000)),
    ("calls/exactly-a-block.wav", None, os.urandom(512)),
    ("calls/a-block-and-a-byte.wav", None, os.urandom(513)),
    ("звонки/вторник/запись-оператора.wav", None, b"RIFF" + b"\0" * 3000),
    ("calls/" + "длинное-имя-" * 12 + ".wav", None, b"x" * 10),  # over 100 bytes: prefix, L or pax
    ("empty.wav", None, b""),
    ("calls/link.wav", "a.wav", b""),
    ("calls/hard.wav", tarfile.LNKTYPE, b""),
    ("calls/fifo", tarfile.FIFOTYPE, b""),
    ("metadata.csv", None, "path,agent\ncalls/a.wav,Иван\n".encode()),
]
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def _members(fmt: int) -> list[tuple[str, bytes | str | None, bytes]]:
    if fmt != tarfile.USTAR_FORMAT:
        return MEMBERS
    # ustar cannot hold a name over 100 bytes without a '/' to split it at: a shorter last part
    return [(n.replace("длинное-имя-" * 12, "длинное-имя-" * 3), k, d) for n, k, d in MEMBERS]


def _expected(raw: bytes) -> list[tuple[int, str, str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return [(m.offset, m.name, sources.tar_kind(m), m.size, m.offset_data) for m in tf.getmembers()]


def _got(found: list[TarEntry]) -> list[tuple[int, str, str, int, int]]:
    return [(e.offset, e.name, e.kind, e.size, e.data_offset) for e in found]


def _feed(reader: TarHeaders | PackedTar, raw: bytes, rng: random.Random) -> tuple[list[TarEntry], list[int]]:
    """Fed in random pieces; each member with how many bytes had arrived when it was reported."""
    found: list[TarEntry] = []
    seen_at: list[int] = []
    i = 0
    while i < len(raw):
        piece = raw[i : i + rng.choice(PIECES)]
        got = reader.feed(piece)
        i += len(piece)
        found += got
        seen_at += [i] * len(got)
    return found, seen_at


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("seed", range(3))
def test_members_equal_what_tarfile_reads_in_pieces_of_any_size(fmt: int, seed: int) -> None:
    raw = _tar(fmt, _members(fmt))
    reader = TarHeaders()
    found, seen_at = _feed(reader, raw, random.Random(seed))
    assert _got(found) == _expected(raw)
    assert {e.kind for e in found} == {"dir", "file", "link", "device"}
    assert reader.stopped == "the end of the archive"
    for e, at in zip(found, seen_at, strict=True):
        assert e.data_offset + (e.size if e.kind == "file" else 0) <= at  # reported once its data is in


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize("members", [1, 3], ids=["one stream", "three streams"])
@pytest.mark.parametrize("seed", range(2))
def test_a_compressed_tar_is_decompressed_into_its_sidecar_and_its_members_read_back(
    tmp_path: Path, packer: str, members: int, seed: int
) -> None:
    raw = _tar(tarfile.PAX_FORMAT, MEMBERS)
    cuts = sorted(random.Random(seed).sample(range(1, len(raw)), members - 1))
    pack = PACKERS[packer][0]
    packed = b"".join(pack(raw[a:b]) for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True))
    sidecar = tmp_path / "upload.part.tar"
    reader = follower(packed[: 1 << 20], tmp_path / "upload.part")
    assert isinstance(reader, PackedTar) and reader.sidecar == sidecar
    found, _ = _feed(reader, packed, random.Random(seed))
    assert _got(found) == _expected(raw)
    assert sidecar.read_bytes()[: len(raw)] == raw
    fd = os.open(sidecar, os.O_RDONLY)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            for e in found:
                if e.kind == "file":
                    extracted = tf.extractfile(e.name)
                    assert extracted is not None
                    assert e.opener(fd)().read(10**9) == extracted.read()
    finally:
        os.close(fd)
    reader.close()
    assert reader.complete  # to its end block: tarfile reads the same members from the sidecar
    with tarfile.open(sidecar) as side, tarfile.open(fileobj=io.BytesIO(packed)) as whole:
        assert [(m.name, m.offset, m.offset_data, m.size) for m in side.getmembers()] == [
            (m.name, m.offset, m.offset_data, m.size) for m in whole.getmembers()
        ]
    reader.remove()
    assert not sidecar.exists()


@pytest.mark.parametrize("packer", PACKERS)
def test_a_sidecar_is_whole_only_when_its_tar_ended(tmp_path: Path, packer: str) -> None:
    """A tar.gz cut before its tar's end block, or one whose following stopped (a damaged header),
    leaves a sidecar that is not the whole tar: the finished upload is read instead."""
    raw = _tar(tarfile.GNU_FORMAT, [("a.wav", None, b"a" * 1000), ("b.wav", None, b"b" * 10)])
    at = _second_header(raw)
    cut = raw[: at + 1024]  # every member's data, no end block
    damaged = raw[:at] + b"\xff" + raw[at + 1 :]
    for data, stopped in ((raw, "the end of the archive"), (cut, None), (damaged, "a header that cannot")):
        packed = PACKERS[packer][0](data)
        reader = follower(packed, tmp_path / "upload.part")
        assert isinstance(reader, PackedTar)
        reader.feed(packed)
        assert reader.stopped is None if stopped is None else (reader.stopped or "").startswith(stopped)
        assert reader.complete == (data is raw)
        early = EarlyArchive(cast(Any, None), BatchOptions(), None, Settings())
        early.headers = reader
        upload = tmp_path / "upload"
        assert early.whole_archive(upload) == (reader.sidecar if data is raw else upload)
        reader.remove()
        assert not reader.sidecar.exists()


def _patched(raw: bytes, at: int, **fields: bytes) -> bytes:
    """The header block at ``at`` with some of its fields replaced and its checksum made right."""
    block = bytearray(raw[at : at + 512])
    where = {"type": 156, "name": 0, "size": 124}
    for name, value in fields.items():
        block[where[name] : where[name] + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return raw[:at] + bytes(block) + raw[at + 512 :]


def _second_header(raw: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return tf.getmembers()[1].offset


def test_it_stops_at_a_damaged_header_and_at_a_sparse_member() -> None:
    raw = _tar(tarfile.GNU_FORMAT, [("a.wav", None, b"a" * 1000), ("b.wav", None, b"b" * 10)])
    at = _second_header(raw)
    damaged = raw[:at] + b"\xff" + raw[at + 1 :]  # its checksum no longer holds
    reader = TarHeaders()
    assert [e.name for e in reader.feed(damaged)] == ["a.wav"]
    assert reader.stopped is not None and reader.stopped.startswith("a header that cannot be read")
    reader = TarHeaders()
    assert [e.name for e in reader.feed(_patched(raw, at, type=tarfile.GNUTYPE_SPARSE))] == ["a.wav"]
    assert reader.stopped == "a sparse member"


def test_a_global_header_is_followed_only_when_it_changes_no_member() -> None:
    members: list[tuple[str, bytes | str | None, bytes]] = [("a.wav", None, b"a" * 700)]
    commented = _tar(tarfile.PAX_FORMAT, members, pax_headers={"comment": "git archive's commit id"})
    reader = TarHeaders()
    found = reader.feed(commented)
    assert _got(found) == _expected(commented) and reader.stopped == "the end of the archive"
    renaming = _tar(tarfile.PAX_FORMAT, members, pax_headers={"path": "другое.wav"})
    reader = TarHeaders()
    assert reader.feed(renaming) == []
    assert reader.stopped == "a global pax header that changes its members"


@pytest.mark.parametrize("packer", PACKERS)
def test_a_bomb_is_not_followed_past_the_ratio(tmp_path: Path, packer: str) -> None:
    raw = _tar(tarfile.GNU_FORMAT, [("zeros.wav", None, b"\0" * 60_000_000)])
    pack, magic = PACKERS[packer]
    packed = pack(raw)
    reader = PackedTar(tmp_path / "bomb.tar", magic)
    _feed(reader, packed, random.Random(0))
    assert reader.stopped == "a stream that expands too much to follow"
    # what reached the disk: at most the ratio's worth (the piece that crossed it is not written)
    assert (tmp_path / "bomb.tar").stat().st_size <= max(1 << 20, sources.MAX_RATIO * reader.packed)
    reader.close()


def test_the_first_bytes_choose_the_follower(tmp_path: Path) -> None:
    plain = _tar(tarfile.GNU_FORMAT, [("a.wav", None, b"a")])
    assert isinstance(follower(plain, tmp_path / "x.part"), TarHeaders)
    for i, (pack, magic) in enumerate(PACKERS.values()):
        chosen = follower(pack(plain), tmp_path / f"{i}.part")
        assert isinstance(chosen, PackedTar) and chosen.magic == magic
        assert [e.name for e in chosen.feed(pack(plain))] == ["a.wav"]
        chosen.remove()
        garbage = PackedTar(tmp_path / f"{i}.tar", magic)
        assert garbage.feed(magic + os.urandom(5000)) == []
        assert (garbage.stopped or "").startswith("a compressed stream that cannot be read")
        garbage.remove()
    assert isinstance(follower(b"PK\x03\x04" + b"\0" * 600, tmp_path / "z.part"), LocalHeaders)
    other = follower(b"7z\xbc\xaf\x27\x1c" + b"\0" * 600, tmp_path / "w.part")  # a 7z: refused at the end
    assert isinstance(other, LocalHeaders) and other.feed(b"7z\xbc\xaf\x27\x1c" + b"\0" * 600) == []
    assert other.stopped == "not a ZIP"


def test_the_whole_tar_confirms_the_members_read_early_and_no_other() -> None:
    raw = _tar(tarfile.PAX_FORMAT, MEMBERS)
    found = TarHeaders().feed(raw)
    early = EarlyArchive(cast(Any, None), BatchOptions(), None, Settings())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        early.read = _Read(entries=list(found))
        assert early._confirmed(tf) is None
        a = found[1]
        for other in (
            replace(a, name="calls/b.wav"),
            replace(a, size=a.size - 1),
            replace(a, offset=a.offset + 512),
            replace(a, data_offset=a.data_offset + 512),
            replace(a, kind="link"),
        ):
            early.read = _Read(entries=[found[0], other])
            assert early._confirmed(tf) is not None, other


def test_a_directory_with_a_size_in_its_header_has_no_data_as_tarfile_reads_it() -> None:
    raw = _tar(tarfile.GNU_FORMAT, [("calls", tarfile.DIRTYPE, b""), ("calls/a.wav", None, b"a" * 10)])
    sized = _patched(raw, 0, size=b"%011o\0" % 4096)  # a directory "of 4096 bytes", none following
    reader = TarHeaders()
    assert _got(reader.feed(sized)) == _expected(sized)
    assert reader.stopped == "the end of the archive"


def test_a_sidecar_that_cannot_be_written_stops_following_and_reports_nothing_unwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _tar(tarfile.GNU_FORMAT, [("a.wav", None, os.urandom(3000)), ("b.wav", None, os.urandom(3000))])
    packed = gzip.compress(raw)
    reader = PackedTar(tmp_path / "full.tar", PACKERS["tar.gz"][1])

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert reader.feed(packed) == []
    assert reader.stopped == "its sidecar could not be written (No space left on device)"
    monkeypatch.undo()
    reader.close()


def test_a_sidecar_listed_is_held_to_the_tar_gz_limits(tmp_path: Path) -> None:
    """The inflated tar is listed against the size of the tar.gz that was uploaded (the ratio)."""
    plain = tmp_path / "upload.part.tar"
    plain.write_bytes(_tar(tarfile.GNU_FORMAT, [("a.wav", None, b"\0" * (3 << 20))]))
    handle, entries = sources.list_archive(plain, Settings())
    handle.close()
    assert [e.name for e in entries] == ["a.wav"]
    with pytest.raises(ApiError) as refused:
        sources.list_archive(plain, Settings(), packed=len(gzip.compress(plain.read_bytes())))
    assert refused.value.code == "archive_bomb"


def test_an_uncompressed_tar_is_read_by_offset_several_members_at_a_time(tmp_path: Path) -> None:
    """An uploaded tar, or a compressed tar's sidecar kept as the batch's archive: its regular
    members are read by offset (each reader its own file, so several at once), the same bytes
    ``tarfile`` reads; a compressed tar stays one stream read in order; a member the file ends
    inside is refused as a bomb, as ``tarfile`` refuses it."""
    raw = _tar(tarfile.PAX_FORMAT, MEMBERS)
    plain, packed = tmp_path / "a.tar", tmp_path / "a.tar.gz"
    plain.write_bytes(raw)
    packed.write_bytes(gzip.compress(raw))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        expected = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}  # type: ignore[union-attr]
    for path, threads in ((plain, sources.SCAN_THREADS), (packed, 1)):
        handle, entries = sources.list_archive(path, Settings())
        try:
            assert sources.archive_threads(handle) == threads
            files = [e for e in entries if e.kind == "file"]
            assert {e.name: b"".join(sources._limited(e.open, e.size, e.name)) for e in files} == expected
            spans = [e for e in files if isinstance(e.open(), sources.SpanReader)]
            assert len(spans) == (len(files) if path is plain else 0)
        finally:
            handle.close()
    # a member the file ends inside (tarfile's listing refuses such a tar; a file that shrank since)
    fd = os.open(plain, os.O_RDONLY)
    try:
        past_the_end = lambda: sources.SpanReader(fd, len(raw) - 100, 1000, "cut.wav")  # noqa: E731
        with pytest.raises(ApiError) as refused:
            b"".join(sources._limited(past_the_end, 1000, "cut.wav"))  # type: ignore[arg-type]
        assert refused.value.code == "archive_bomb"
    finally:
        os.close(fd)
