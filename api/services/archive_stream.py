"""A ZIP or tar (plain, .gz, .bz2, .xz) batch read while it uploads: its first calls are
transcribed before its last bytes arrive.

A ZIP's directory is at its end, so a batch made from the finished upload starts no job before the
whole archive is in (a call center's archive of a few GB over a 1 Gbit/s link: half a minute). But
every entry is also preceded by its *local header* (name, method, CRC, sizes), so a reader that
follows the bytes as they come knows where each entry ends. :class:`LocalHeaders` is that reader
(written here because the streaming unzip libraries, e.g. ``stream-unzip``, pull from an iterator
and give no entry offsets, which the check against the central directory below needs; the bytes
themselves are inflated by :mod:`zlib`). A tar is a header before each member and nothing else:
:class:`TarHeaders` follows it (each header block parsed by ``tarfile.TarInfo.frombuf``, its
checksum checked; GNU long names and pax headers read as :mod:`tarfile` reads them), and a tar.gz,
tar.bz2 or tar.xz is decompressed as it arrives into a *sidecar* beside the upload
(:class:`PackedTar`), from which its members are read; at the end a sidecar that holds the whole tar
is the archive read and kept (not decompressed again), else it is removed when the request ends.
The archive's first bytes choose (:func:`follower`).

:class:`EarlyArchive` is fed every piece of the file part after it is written to disk
(``receive_form``'s tap). Once the first entry is complete it creates the batch (status
``preparing``, ``options.receiving``) and, on a thread of its own, extracts each complete entry
from the partial file (a ZIP entry's CRC and size checked against its header), probes it and
commits its job at once, as the background reader (:mod:`api.services.batch_intake`) does for a
large archive: the workers start on the first calls while the rest uploads. When the upload ends,
the finished archive (the authority) is checked against what was read early: every ZIP entry read
must be in the central directory at the same offset with the same name, CRC, sizes and method, and
be a regular file; every tar member must be what :mod:`tarfile` reads at the same offsets (name,
size, type); the whole archive's limits are checked as before. Then the rest of the entries are
read by the background reader's own code (in the request when there are few, else in the
background), and ``metadata.csv`` is attached to every job, early ones included.

Anything unexpected makes the early batch go away (deleted with its jobs and files, as a DELETE
would) and the request goes on exactly as without early reading, so its answer (a batch, or a
refusal with nothing created) is the one it always was: a local header the directory does not
confirm, an entry that fails its CRC, an entry or limit that would refuse the archive, a form field
after the file part, an ``Idempotency-Key`` already in use. Early reading never starts for a body
whose file part fits one piece (1 MiB: nothing to overlap) or another format (a 7z, a RAR: refused
at the end), and stops at an encrypted entry, a method other than stored and deflate, or a
*stored* entry whose sizes follow its data in a descriptor without its signature (nothing then
marks its end); in a tar, at a damaged header, a sparse member or a global header that renames; in
a compressed tar, past ``MAX_RATIO`` times its compressed bytes. A *deflated* entry whose sizes
follow its data (a ZIP written to a pipe, as by Java's ``ZipOutputStream`` or macOS's Archive
Utility) is inflated as it arrives to find its end, and its data descriptor must then match what
was inflated (an entry expanding more than ``MAX_RATIO`` times is not followed). A *stored* entry
whose sizes follow its data (Go's ``archive/zip`` writes every entry so, ``zipfile`` writing to a
pipe too) ends where a signed data descriptor whose CRC and both sizes match the bytes before it
is followed by the next header's signature: bytes that only look like one are data (more than
1 000 of them in one entry stop the reader). Nor does it start with ``item_webhooks``
(an early job's event would go out before its metadata). A client gone midway, or a body refused
(too large, malformed), deletes the batch. An API process that dies mid-upload leaves a
``receiving`` batch whose beat goes stale: the sweep deletes it (its client never got an answer).
"""

from __future__ import annotations

import bz2
import io
import logging
import lzma
import os
import queue
import stat
import struct
import tarfile
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol, cast

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import Caller
from api.errors import ApiError
from api.schemas import BatchOptions
from api.services import batch_intake as intake
from api.services import batch_sources as sources
from api.services import batches as batch_svc
from api.uploads import PIECE, FileSink, StoredAudio
from shared.db.models import Batch
from shared.db.session import sessionmaker_for
from shared.platform import received_files
from shared.platform.settings import Settings

log = logging.getLogger("tone.api.archive_stream")

_LOCAL = b"PK\x03\x04"
_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, lengths
_ZIP64 = 0x0001
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_DESCRIPTOR = b"PK\x07\x08"
_DESCRIPTOR_CRC = struct.unpack("<L", _DESCRIPTOR)[0]  # a CRC equal to the signature: read as a CRC


@dataclass(frozen=True)
class LocalEntry:
    """One entry as its local header describes it, its data complete in the upload."""

    offset: int  # of its local header in the archive
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    data_offset: int

    @property
    def kind(self) -> str:
        return "dir" if self.name.endswith("/") else "file"

    def opener(self, fd: int) -> Callable[[], IO[bytes]]:
        return lambda: cast(IO[bytes], _EntryReader(fd, self))

    @property
    def name(self) -> str:
        """As :func:`api.services.batch_sources.zip_name` reads the directory's name."""
        if self.flags & 0x800:
            return self.raw_name.decode("utf-8", errors="replace")
        try:
            return self.raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return self.raw_name.decode("cp866")


class LocalHeaders:
    """The local headers of a ZIP read from its bytes as they arrive (``feed`` them in order).
    ``feed`` returns the entries whose data became complete. Reading stops for good, ``stopped``
    saying why, at the central directory or at anything this reader does not follow (see the module)."""

    def __init__(self) -> None:
        self.pos = 0  # bytes of the archive fed so far
        self.stopped: str | None = None
        self._head = bytearray()  # a local header being gathered
        self._entry: LocalEntry | None = None  # the entry whose data is arriving
        self._left = 0  # of its data
        self._sized: _Sized | None = None  # a deflated entry whose sizes follow its data
        self._stored: _Stored | None = None  # a stored one

    def feed(self, piece: bytes) -> list[LocalEntry]:
        done: list[LocalEntry] = []
        i = 0
        while i < len(piece) and self.stopped is None:
            if self._sized is not None:
                i = self._follow(piece, i, done)
                continue
            if self._stored is not None:
                i = self._follow_stored(piece, i, done)
                continue
            if self._entry is not None:
                take = min(self._left, len(piece) - i)
                i += take
                self.pos += take
                self._left -= take
                if not self._left:
                    done.append(self._entry)
                    self._entry = None
                continue
            need = self._needed()
            take = min(need - len(self._head), len(piece) - i)
            self._head += piece[i : i + take]
            i += take
            self.pos += take
            if len(self._head) == self._needed():  # complete (a 30-byte start may ask for more)
                entry = self._parse()
                if entry is not None and entry.compressed == 0:
                    done.append(entry)
                elif entry is not None:
                    self._entry, self._left = entry, entry.compressed
        return done

    def _needed(self) -> int:
        if len(self._head) < _HEADER.size or self._head[:4] != _LOCAL:
            return _HEADER.size
        _, _, _, _, _, _, _, _, _, n, m = _HEADER.unpack_from(self._head)
        return _HEADER.size + n + m

    def _parse(self) -> LocalEntry | None:
        sig, _, flags, method, _, _, crc, csize, usize, n, _ = _HEADER.unpack_from(self._head)
        if sig != _LOCAL:
            self._stop("the central directory" if self.pos > len(self._head) else "not a ZIP")
            return None
        if flags & 0x1 or flags & 0x40:
            self._stop("an encrypted entry")
            return None
        if method not in _METHODS:
            self._stop(f"an entry compressed with method {method}")
            return None
        raw_name = bytes(self._head[_HEADER.size : _HEADER.size + n])
        extra = bytes(self._head[_HEADER.size + n :])
        if flags & 0x8:  # its sizes follow its data: a deflate stream ends by itself, stored data at
            # the descriptor that matches it (``_follow_stored``)
            offset = self.pos - len(self._head)
            self._head = bytearray()
            zip64 = _zip64_field(extra) is not None
            if method == zipfile.ZIP_STORED:
                self._stored = _Stored(offset, raw_name, flags, zip64, self.pos)
            else:
                self._sized = _Sized(offset, raw_name, flags, zip64, self.pos)
            return None
        if 0xFFFFFFFF in (csize, usize):
            sizes = _zip64_sizes(extra, usize, csize)
            if sizes is None:
                self._stop("a ZIP64 entry without its sizes")
                return None
            usize, csize = sizes
        offset = self.pos - len(self._head)
        self._head = bytearray()
        return LocalEntry(offset, raw_name, flags, method, crc, csize, usize, self.pos)

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._head = bytearray()

    def _follow(self, piece: bytes, i: int, done: list[LocalEntry]) -> int:
        """Inflate a sized-later entry's data to find where it ends, then read its data
        descriptor (checked against what was inflated); returns how far into ``piece`` it got."""
        e = self._sized
        assert e is not None
        if not e.inflate.eof:
            data = piece[i:]
            while data and not e.inflate.eof:
                out = e.inflate.decompress(data, PIECE)
                e.crc, e.size = zlib.crc32(out, e.crc), e.size + len(out)
                data = e.inflate.unconsumed_tail
                if e.size > 1024 * 1024 and e.size > sources.MAX_RATIO * (
                    e.compressed + len(piece) - i - len(data)
                ):
                    self._stop("an entry that expands too much to follow")
                    return len(piece)
            used = len(piece) - i - len(data) - (len(e.inflate.unused_data) if e.inflate.eof else 0)
            e.compressed += used
            self.pos += used
            return i + used
        # [PK\7\8] CRC, compressed size, uncompressed size (8 bytes each with ZIP64)
        signed = len(e.tail) >= 4 and e.tail[:4] == _DESCRIPTOR and e.crc != _DESCRIPTOR_CRC
        need = 4 if len(e.tail) < 4 else (4 if signed else 0) + 4 + (16 if e.zip64 else 8)
        take = min(need - len(e.tail), len(piece) - i)
        e.tail += piece[i : i + take]
        self.pos += take
        i += take
        if len(e.tail) < need or need == 4:
            return i
        body = bytes(e.tail[4:] if signed else e.tail)
        crc, csize, usize = struct.unpack("<LQQ" if e.zip64 else "<LLL", body)
        mask = (1 << 64) - 1 if e.zip64 else 0xFFFFFFFF
        self._sized = None
        if (crc, csize, usize) != (e.crc, e.compressed & mask, e.size & mask):
            self._stop("a data descriptor that does not match its data")
            return i
        done.append(
            LocalEntry(
                e.offset, e.raw_name, e.flags, zipfile.ZIP_DEFLATED, crc, e.compressed, e.size, e.data_offset
            )
        )
        return i

    def _follow_stored(self, piece: bytes, i: int, done: list[LocalEntry]) -> int:
        """A stored entry whose sizes follow its data: its bytes are data up to a data descriptor
        (signed: ``PK\\7\\8``) whose CRC and both sizes match every byte before it, followed by the
        next header's signature; returns how far into ``piece`` it got. A few bytes that may begin
        the descriptor are held until the next piece decides."""
        e = self._stored
        assert e is not None
        held = len(e.held)
        buf = bytes(e.held) + piece[i:]
        at = 0
        while True:
            k = buf.find(_DESCRIPTOR, at)
            if k < 0:  # all data, but for the last bytes: a signature may start there
                k = max(at, len(buf) - len(_DESCRIPTOR) + 1)
                self._stored_data(e, memoryview(buf)[:k])
                e.held = bytearray(buf[k:])
                return len(piece)
            end = _stored_end(buf, k, e)
            if end is None:  # not enough bytes after it yet to tell
                self._stored_data(e, memoryview(buf)[:k])
                e.held = bytearray(buf[k:])
                return len(piece)
            if end:
                break
            at = k + 1  # data that looks like a descriptor's signature
            e.lookalikes += 1
            if e.lookalikes > _LOOKALIKES:  # each costs a look: data made of them is not followed
                self._stop("a stored entry whose data holds many descriptor signatures")
                return len(piece)
        self._stored_data(e, memoryview(buf)[:k])
        self.pos += end - k
        self._stored = None
        done.append(
            LocalEntry(
                e.offset, e.raw_name, e.flags, zipfile.ZIP_STORED, e.crc, e.size, e.size, e.data_offset
            )
        )
        if end < held:  # the next header began in the bytes held from the last piece
            self._head += buf[end:held]
            self.pos += held - end
            return i
        return i + end - held

    def _stored_data(self, e: _Stored, data: bytes | memoryview) -> None:
        e.crc, e.size = zlib.crc32(data, e.crc), e.size + len(data)
        self.pos += len(data)


@dataclass
class _Sized:
    """A deflated entry whose sizes follow its data, being inflated as it arrives."""

    offset: int
    raw_name: bytes
    flags: int
    zip64: bool
    data_offset: int
    inflate: Any = field(default_factory=lambda: zlib.decompressobj(-15))
    crc: int = 0
    size: int = 0
    compressed: int = 0
    tail: bytearray = field(default_factory=bytearray)  # its data descriptor, gathered


@dataclass
class _Stored:
    """A stored entry whose sizes follow its data, its end being looked for as it arrives."""

    offset: int
    raw_name: bytes
    flags: int
    zip64: bool
    data_offset: int
    crc: int = 0  # of the bytes known to be its data
    size: int = 0
    held: bytearray = field(default_factory=bytearray)  # bytes after those, not yet known to be data
    lookalikes: int = 0  # signatures in its data that began no descriptor of it


# what follows an entry: the next one's local header, or the central directory (its first entry,
# the ZIP64 end record, or the end record of an archive with no directory entry)
_NEXT = (_LOCAL, b"PK\x01\x02", b"PK\x06\x06", b"PK\x05\x06")
_STORED_DESCRIPTORS = (struct.Struct("<LLL"), struct.Struct("<LQQ"))  # CRC and sizes, 4 or 8 bytes each
_STORED_NEED = 4 + _STORED_DESCRIPTORS[1].size + 4  # bytes from a candidate's start that decide it
_LOOKALIKES = 1000  # in one entry's data (random audio: one in 4 GiB)


def _stored_end(buf: bytes, k: int, e: _Stored) -> int | None:
    """Whether the signature at ``buf[k]`` begins the data descriptor of the stored entry ``e``
    (whose data so far is ``e``'s bytes and ``buf[:k]``): where its descriptor ends in ``buf``, 0
    if it does not, None if ``buf`` ends too soon to tell. Its sizes are 8 bytes each when its local
    header has a ZIP64 field, and also when it has none, as Go writes an entry of 4 GiB or more."""
    if len(buf) < k + _STORED_NEED:
        return None
    size = e.size + k
    layouts = _STORED_DESCRIPTORS[::-1] if e.zip64 else _STORED_DESCRIPTORS
    crc: int | None = None
    for layout in layouts:
        stored_crc, csize, usize = layout.unpack_from(buf, k + 4)
        end = k + 4 + layout.size
        if csize != usize or usize != size & (0xFFFFFFFF if layout.size == 12 else (1 << 64) - 1):
            continue
        if buf[end : end + 4] not in _NEXT:
            continue
        crc = zlib.crc32(memoryview(buf)[:k], e.crc) if crc is None else crc
        if crc == stored_crc:
            return end
    return 0


def _zip64_field(extra: bytes) -> bytes | None:
    """The body of a local header's ZIP64 extra field, if it has one."""
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, i)
        if tag == _ZIP64:
            return extra[i + 4 : i + 4 + length]
        i += 4 + length
    return None


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int] | None:
    """The sizes a ZIP64 extra field holds for the 0xFFFFFFFF ones (uncompressed first)."""
    body = _zip64_field(extra)
    if body is None:
        return None
    values = [struct.unpack_from("<Q", body, j)[0] for j in range(0, len(body) - 7, 8)]
    if usize == 0xFFFFFFFF:
        if not values:
            return None
        usize = values.pop(0)
    if csize == 0xFFFFFFFF:
        if not values:
            return None
        csize = values.pop(0)
    return usize, csize


class _EntryReader(io.RawIOBase):
    """An early entry's bytes, inflated from the partial upload (``fd``), its CRC and size checked
    at its end (``zipfile.BadZipFile`` otherwise, which extraction turns into a refusal)."""

    def __init__(self, fd: int, entry: LocalEntry) -> None:
        self.fd, self.entry = fd, entry
        self.pos, self.left = entry.data_offset, entry.compressed
        self.inflate = zlib.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
        self.tail = b""  # compressed bytes not yet inflated (bounded output per read)
        self.crc = self.size = 0
        self.ended = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        want = PIECE if n is None or n < 0 else n
        while not self.ended:
            if not self.tail and self.left:
                self.tail = os.pread(self.fd, min(PIECE, self.left), self.pos)
                if not self.tail:
                    raise zipfile.BadZipFile(f"{self.entry.name}: the upload ends inside it")
                self.pos += len(self.tail)
                self.left -= len(self.tail)
            if self.inflate is None:
                out, self.tail = self.tail[:want], self.tail[want:]
            else:
                out = self.inflate.decompress(self.tail, want)
                self.tail = self.inflate.unconsumed_tail
            if not self.left and not self.tail:
                if self.inflate is not None:
                    out += self.inflate.flush()
                self.ended = True
            self.crc = zlib.crc32(out, self.crc)
            self.size += len(out)
            if self.ended and (self.crc != self.entry.crc or self.size != self.entry.size):
                raise zipfile.BadZipFile(f"{self.entry.name}: its data does not match its header")
            if out:
                return out
        return b""


# -- tar and tar.gz -------------------------------------------------------------------------------

_BLOCK = tarfile.BLOCKSIZE
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_EXTENDED_LIMIT = 1024 * 1024  # an extended header's data (a long name, pax records) followed at most
# pax keywords of a global header that change no member's name, size or type
_GLOBAL_HARMLESS = ("comment", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname")
_TAR_END = "the end of the archive"


@dataclass(frozen=True)
class TarEntry:
    """One tar member as its headers describe it, its data complete in the (decompressed) stream."""

    offset: int  # of its first header (a pax or GNU long-name header's, when it has one): TarInfo.offset
    name: str  # as :mod:`tarfile` names it
    kind: str  # file | dir | link | device, as :mod:`api.services.batch_sources` names a tar member
    size: int
    data_offset: int

    compressed = None  # a tar declares no compressed size

    def opener(self, fd: int) -> Callable[[], IO[bytes]]:
        return lambda: cast(IO[bytes], sources.SpanReader(fd, self.data_offset, self.size, self.name))


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


class TarHeaders:
    """The headers of a tar read from its bytes as they arrive, as :mod:`tarfile` reads them (ustar,
    GNU long names, pax extended headers; ``TarInfo.frombuf`` parses each header block, its
    checksum included). ``feed`` returns the members whose data became complete. Reading stops for
    good, ``stopped`` saying why, at the archive's end (a zero block), a damaged header, a sparse
    member, a global header that renames or resizes, or an extended header over 1 MiB."""

    def __init__(self) -> None:
        self.pos = 0  # bytes of the tar fed so far
        self.stopped: str | None = None
        self._block = bytearray()  # a header block being gathered
        self._ext: tarfile.TarInfo | None = None  # an extended header whose data is arriving
        self._ext_data = bytearray()
        self._first: int | None = None  # the offset of the member's first (extended) header
        self._name: str | None = None  # from an extended header: the first one read wins, as in tarfile
        self._size: int | None = None
        self._entry: TarEntry | None = None  # the member whose data is arriving
        self._data_end = 0  # where its data ends
        self._left = 0  # bytes to skip: its data, then the padding to the next block

    def feed(self, piece: bytes) -> list[TarEntry]:
        done: list[TarEntry] = []
        i, n = 0, len(piece)
        while i < n and self.stopped is None:
            if self._left:
                take = min(self._left, n - i)
                if self._ext is not None:
                    self._ext_data += piece[i : i + take]
                i += take
                self.pos += take
                self._left -= take
                if self._entry is not None and self.pos >= self._data_end:
                    done.append(self._entry)
                    self._entry = None
                if not self._left and self._ext is not None:
                    self._extended()
                continue
            take = min(_BLOCK - len(self._block), n - i)
            self._block += piece[i : i + take]
            i += take
            self.pos += take
            if len(self._block) == _BLOCK:
                entry = self._header(bytes(self._block))
                self._block = bytearray()
                if entry is not None and not self._left:  # no data (a directory, a link, empty)
                    done.append(entry)
                elif entry is not None:
                    self._entry, self._data_end = entry, self.pos + min(self._left, entry.size)
        return done

    def _stop(self, why: str) -> None:
        self.stopped = why

    def _header(self, block: bytes) -> TarEntry | None:
        offset = self.pos - _BLOCK
        if not any(block):
            self._stop(_TAR_END if offset else "not a tar")
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            self._stop(f"a header that cannot be read ({exc})" if offset else "not a tar")
            return None
        if offset == 0 and block[257:262] != b"ustar":
            self._stop("not a ustar, GNU or pax tar")
            return None
        if info.type == tarfile.GNUTYPE_SPARSE:
            self._stop("a sparse member")
            return None
        if self._first is None:
            self._first = offset
        if info.type in _EXTENDED or info.type == tarfile.XGLTYPE:
            if info.size > _EXTENDED_LIMIT:
                self._stop("an extended header too large to follow")
                return None
            self._ext, self._ext_data, self._left = info, bytearray(), _padded(info.size)
            if info.type == tarfile.XGLTYPE:
                self._first = None if self._first == offset else self._first  # not the member's
            if not self._left:
                self._extended()
            return None
        name = info.name if self._name is None else self._name
        size = info.size if self._size is None else self._size
        if info.isdir():
            name = name.rstrip("/")
        data = size if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES else 0
        entry = TarEntry(self._first, name, sources.tar_kind(info), size, self.pos)
        self._first = self._name = self._size = None
        self._left = _padded(data)
        return entry

    def _extended(self) -> None:
        """An extended header's data is in: the member after it is named (and sized) by it."""
        info, data = self._ext, bytes(self._ext_data)
        assert info is not None
        self._ext, self._ext_data = None, bytearray()
        data = data[: info.size]
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.type == tarfile.GNUTYPE_LONGNAME and self._name is None:
                self._name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            return
        records = _pax_records(data)
        if records is None:
            self._stop("a pax header that cannot be read")
            return
        if any(k.startswith("GNU.sparse") for k in records):
            self._stop("a sparse member")
        elif info.type == tarfile.XGLTYPE:
            if any(k not in _GLOBAL_HARMLESS for k in records):
                self._stop("a global pax header that changes its members")
        else:
            if "path" in records and self._name is None:
                self._name = records["path"].rstrip("/")
            if "size" in records and self._size is None:
                try:
                    self._size = int(records["size"])
                except ValueError:
                    self._stop("a pax header with a size that is not a number")


def _pax_records(data: bytes) -> dict[str, str] | None:
    """``"<length> <keyword>=<value>\\n"`` records, decoded as :mod:`tarfile` decodes them (UTF-8,
    else the file system's encoding with surrogates); None when they do not parse."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:].strip(b"\0"):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            return None
        record = data[space + 1 : pos + length]
        if length <= 0 or b"=" not in record or not record.endswith(b"\n"):
            return None
        keyword, _, value = record[:-1].partition(b"=")
        out[keyword.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Gunzip:
    """:mod:`zlib`'s gzip decompressor with the interface of :mod:`bz2`'s and :mod:`lzma`'s
    (``decompress(data, max_length)`` keeping what it did not consume, ``eof``, ``unused_data``)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._z.decompress(self._tail + data, max_length)
        self._tail = self._z.unconsumed_tail
        return out

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


# a compressed tar's first bytes -> its decompressor (one per stream: gzip, bzip2 and xz files may
# hold several streams one after another, e.g. pigz's, pbzip2's and xz -T's, read as their tools do)
PACKED: dict[bytes, Callable[[], _Decompressor]] = {
    b"\x1f\x8b": _Gunzip,
    b"BZh": bz2.BZ2Decompressor,
    b"\xfd7zXZ\x00": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
}
_DECOMPRESS_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError)


def packed_kind(first: bytes) -> bytes | None:
    """The magic of the compressed format ``first`` starts with (a key of :data:`PACKED`), or None."""
    return next((magic for magic in PACKED if first.startswith(magic)), None)


class PackedTar:
    """A tar.gz, tar.bz2 or tar.xz followed as it arrives: its streams decompressed (in bounded
    pieces) into ``sidecar``, a file beside the upload from which the members are read, and the
    tar within followed by :class:`TarHeaders`. Stops following past ``MAX_RATIO`` times the
    compressed bytes received (a bomb is read after the upload, and refused there)."""

    def __init__(self, sidecar: Path, magic: bytes) -> None:
        self.tar = TarHeaders()
        self.sidecar = sidecar
        self.magic = magic
        self._fd: int | None = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._stream = PACKED[magic]()
        self.packed = self.expanded = 0
        self._stopped: str | None = None

    @property
    def stopped(self) -> str | None:
        return self._stopped or self.tar.stopped

    def feed(self, piece: bytes) -> list[TarEntry]:
        done: list[TarEntry] = []
        self.packed += len(piece)
        data = piece
        while self.stopped is None:
            try:
                out = self._stream.decompress(data, PIECE)
            except _DECOMPRESS_ERRORS as exc:
                self._stopped = f"a compressed stream that cannot be read ({exc})"
                break
            data = b""
            if self._stream.eof:  # a stream ended: another may follow (as gzip, bzip2 and xz read them)
                data = self._stream.unused_data
                self._stream = PACKED[self.magic]()
                if data and not self.magic.startswith(data[: len(self.magic)]):
                    self._stopped = "data after the compressed stream"
            self.expanded += len(out)
            if self.expanded > 1024 * 1024 and self.expanded > sources.MAX_RATIO * self.packed:
                self._stopped = "a stream that expands too much to follow"
                break
            self._write(out)
            if self._stopped is not None:  # not written: nothing of it is reported
                break
            done += self.tar.feed(out)
            if not out and not data:  # all it was given is used (or held until the next piece)
                break
        return done

    @property
    def complete(self) -> bool:
        """The sidecar holds the whole tar, to its end block: every byte before it decompressed and
        written, so :mod:`tarfile` reads the same members from it as from the upload."""
        return self._stopped is None and self.tar.stopped == _TAR_END

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view and self._fd is not None:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # e.g. a full disk: the upload goes on, read at its end
            self._stopped = f"its sidecar could not be written ({exc.strerror})"

    def close(self) -> None:
        """No more is written to the sidecar (it stays until :meth:`remove`)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """The sidecar closed and removed (the members read early are already stored)."""
        self.close()
        self.sidecar.unlink(missing_ok=True)


Early = LocalEntry | TarEntry  # an entry complete in the upload
Follower = LocalHeaders | TarHeaders | PackedTar


def follower(first: bytes, part: Path) -> Follower:
    """What follows an archive whose first piece is ``first`` (uploading to ``part``): a ZIP's
    local headers, a tar's headers, a tar.gz's, tar.bz2's or tar.xz's (decompressed into a sidecar
    beside ``part``); anything else is a ZIP reader that stops at once ("not a ZIP")."""
    magic = packed_kind(first)
    if magic is not None:
        try:
            return PackedTar(received_files.sidecar(part), magic)
        except OSError:  # no sidecar (a full disk, a read-only directory): read at the end
            return LocalHeaders()
    if first[257:262] == b"ustar":
        return TarHeaders()
    return LocalHeaders()


def _is_metadata(e: sources.Entry) -> bool:
    return e.kind == "file" and sources.clean_name(e.name) == sources.METADATA_CSV


@dataclass
class _Read:
    """What the early reader made of the archive so far."""

    entries: list[Early] = field(default_factory=list)  # read into the batch, in order
    names: set[str] = field(default_factory=set)
    by_hash: dict[str, uuid.UUID] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    files: int = 0  # counted against the limits, as the whole archive's are at its end
    expanded: int = 0


class EarlyArchive:
    """The batch of a ZIP or tar (.gz, .bz2, .xz) being uploaded, its complete entries read as they
    arrive (see the module). ``written`` runs in the request's threadpool after each piece is on
    disk; ``finish`` or ``abort`` ends it."""

    def __init__(self, caller: Caller, options: BatchOptions, key: str | None, settings: Settings) -> None:
        self.caller, self.options, self.key, self.settings = caller, options, key, settings
        self.headers: Follower | None = None  # chosen by the archive's first bytes
        self.failed: str | None = None  # why early reading gave up (the batch goes away at the end)
        self.batch_id: uuid.UUID | None = None
        self.beat: datetime | None = None
        self.read = _Read()
        self._queue: queue.SimpleQueue[Early | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ending = threading.Event()  # the upload is over: no further chunk is read early
        self._sub = batch_svc.Submission("archive", options, "", key)
        self.closed = False
        self.lost = False  # cancelled or deleted by its tenant meanwhile

    # -- the request's side ---------------------------------------------------------------------

    def written(self, sink: FileSink, piece: bytes) -> None:
        if self.headers is None:
            self.headers = follower(piece, sink.part)
        if self.failed is not None or self.headers.stopped is not None:
            return
        entries = self.headers.feed(piece)
        if not entries:
            return
        sink.flush()  # the reader reads the entry from the file
        if self._thread is None:
            source = self.headers.sidecar if isinstance(self.headers, PackedTar) else sink.part
            self._thread = threading.Thread(target=self._run, args=(source,), name="batch-early", daemon=True)
            self._thread.start()
        for entry in entries:
            self._queue.put(entry)

    def abort(self) -> None:
        """The upload failed or was refused: the batch and everything it made go away (nothing
        once :meth:`finish` has begun)."""
        if self.closed:
            return
        self.closed = True
        self._end()
        if isinstance(self.headers, PackedTar):
            self.headers.remove()
        self._discard("the upload did not complete")

    def finish(self, db: Session, stored: StoredAudio, options: BatchOptions) -> tuple[Batch, bool] | None:
        """The upload is complete at ``stored.path``: the batch, its entries checked against the
        central directory and the rest read in the request when few are left (``(batch, True)``;
        still ``preparing`` when its background reader is to read the rest); or None when the early
        batch is gone and the request must go on as without it (an ApiError: the archive is
        refused, the batch gone too)."""
        self.closed = True
        self._end()
        try:
            return self._finish(db, stored, options)
        finally:
            if isinstance(self.headers, PackedTar):
                self.headers.remove()  # (a sidecar kept as the batch's archive has another name now)

    def _finish(self, db: Session, stored: StoredAudio, options: BatchOptions) -> tuple[Batch, bool] | None:
        if self.batch_id is None:
            return None
        if self.lost:
            return self._lost(db)
        if options != self.options:  # a field after the file part changed them
            self.failed = self.failed or "a form field after the file changed the options"
        if self.failed is not None:
            self._discard(self.failed)
            return None
        source = self.whole_archive(stored.path)
        try:
            handle, entries = sources.list_archive(source, self.settings, packed=stored.size)
            try:
                why = self._confirmed(handle)
                meta = (
                    None
                    if why
                    else next((sources.metadata_of(e)[0] for e in entries if _is_metadata(e)), None)
                )
            finally:
                handle.close()
        except BaseException:  # refused (or our own failure): nothing of the early batch stays
            self._discard("the archive is refused")
            raise
        if why is not None:
            self._discard(why)
            return None
        return self._hand_on(db, stored, source, entries, meta)

    def whole_archive(self, upload: Path) -> Path:
        """Where the finished archive is read: a compressed tar whose whole tar is in its sidecar
        is listed from the sidecar, and the rest of its members read from there too, not
        decompressed twice more (a tar.gz of 84 MB: 0.4 s each on this machine; a tar.xz: 5 s);
        else the upload. Its limits stay the upload's."""
        packed = self.headers if isinstance(self.headers, PackedTar) else None
        return packed.sidecar if packed is not None and packed.complete else upload

    # -- the reader thread ----------------------------------------------------------------------

    def _end(self) -> None:
        """The reader stopped after the chunk it is in: what it has not read yet is left to the
        background reader's code (the request is not held while it catches up)."""
        if self._thread is not None:
            self._ending.set()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if isinstance(self.headers, PackedTar):
            self.headers.close()  # removed by abort or finish

    def _run(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            with sessionmaker_for(self.settings.database_url)() as db:
                self._loop(db, fd)
        except Exception:
            log.exception("early reading of an uploaded archive stopped")
            self.failed = self.failed or "internal_error while reading early"
        finally:
            os.close(fd)

    def _loop(self, db: Session, fd: int) -> None:
        idle = self.settings.batch_intake_stale_seconds / 4
        while True:
            try:
                first = self._queue.get(timeout=idle)
            except queue.Empty:
                if self.beat is not None and self.failed is None:
                    self._keep(db)
                continue
            chunk, held = [first], first.size if first is not None else 0
            # a chunk as the background reader's: its count, or 1 GiB (its read stays well inside
            # the stale seconds, so no sweep takes the batch while it is read)
            while chunk[-1] is not None and len(chunk) < self.settings.batch_intake_chunk:
                if held >= intake.CHUNK_BYTES:
                    break
                try:
                    chunk.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                held += chunk[-1].size if chunk[-1] is not None else 0
            ended = chunk[-1] is None or self._ending.is_set()
            entries = [e for e in chunk if e is not None]
            if entries and self.failed is None and not self._ending.is_set():
                self._read_chunk(db, fd, entries)
                if self.failed is not None and not self.lost:  # no more work for a batch that goes away
                    self._discard(self.failed)
            if ended:
                return

    def _keep(self, db: Session) -> None:
        """Renew the beat while the upload goes on with no entry complete (a long entry)."""
        assert self.batch_id is not None and self.beat is not None
        beat = intake.renew(db, self.batch_id, self.beat, [], 0)
        db.commit()
        if beat is None:
            self.failed, self.lost = "the batch was cancelled or deleted while it uploaded", True
        else:
            self.beat = beat

    def _read_chunk(self, db: Session, fd: int, chunk: list[Early]) -> None:
        read, settings = self.read, self.settings
        listed: list[sources.Entry] = []
        skipped: list[dict[str, str]] = []
        for e in chunk:
            name, kind = e.name, e.kind
            if kind == "file":
                read.files += 1
                read.expanded += e.size
            entry = sources.Entry(name, e.size, e.compressed, kind, e.opener(fd))
            try:  # an entry (or the entries so far) the whole archive would be refused for: not early
                sources.check_entries([entry], None, settings)
            except ApiError as exc:
                self.failed = exc.message
                return
            if read.files > settings.batch_max_entries or read.expanded > settings.batch_max_total_bytes:
                self.failed = "the archive is over a limit"
                return
            clean = sources.clean_name(name)
            if kind == "file" and clean in read.names:
                skipped.append({"name": clean, "reason": "duplicate_name"})
                continue
            read.names.add(clean)
            listed.append(entry)
        try:
            items, skips, meta = sources.collect(listed, settings, sources.extracted(settings))
        except ApiError as exc:  # an entry that does not match its header: the whole archive's refusal
            self.failed = exc.message
            return
        read.meta = meta or read.meta
        if self.batch_id is None and not self._create(db):
            sources.discard(items)
            return
        assert self.batch_id is not None and self.beat is not None
        beat = intake.commit_chunk(
            db,
            self.batch_id,
            self.beat,
            items,
            skipped + skips,
            read.meta,
            read.by_hash,
            self.caller,
            self._sub,
            settings,
        )
        if beat is None:
            self.failed, self.lost = "the batch was cancelled or deleted while it uploaded", True
            return
        self.beat = beat
        read.entries.extend(chunk)

    def _create(self, db: Session) -> bool:
        """The batch row, status preparing, held by this reader (its beat)."""
        batch_id, now = uuid.uuid4(), datetime.now(timezone.utc)
        options = self.options
        db.add(
            Batch(
                id=batch_id,
                tenant_id=self.caller.tenant_id,
                name=options.name,
                source="archive",
                status="preparing",
                options={**batch_svc.batch_options(options), "receiving": True},
                prepared_beat_at=now,
                skipped=[],
                items=0,
                webhook_url=options.webhook_url,
                idempotency_key=self.key,
            )
        )
        try:
            db.commit()
        except IntegrityError:  # the key was taken meanwhile: the request goes on as without early reading
            db.rollback()
            self.failed = "its Idempotency-Key is in use"
            return False
        self.batch_id, self.beat = batch_id, now
        log.info("batch %s: reading its archive while it uploads", batch_id)
        return True

    # -- the end --------------------------------------------------------------------------------

    def _confirmed(self, handle: Any) -> str | None:
        """None when the finished archive confirms every entry read early, else why not: a ZIP's
        central directory, or the members :mod:`tarfile` reads from the whole tar."""
        if isinstance(handle, tarfile.TarFile):
            return self._confirmed_tar(handle)
        if not isinstance(handle, zipfile.ZipFile):
            return "not a ZIP"
        infos = {info.header_offset: info for info in handle.infolist()}
        for e in self.read.entries:
            info = infos.get(e.offset)
            if info is None or not isinstance(e, LocalEntry):
                return f"the entry {e.name!r} is not in the central directory"
            mode = info.external_attr >> 16
            same = (
                sources.zip_name(info) == e.name
                and (info.CRC, info.compress_size, info.file_size, info.compress_type)
                == (e.crc, e.compressed, e.size, e.method)
                and info.is_dir() == (e.kind == "dir")
                and (info.is_dir() or not mode or not stat.S_IFMT(mode) or stat.S_ISREG(mode))
            )
            if not same:
                return f"the central directory describes {e.name!r} otherwise than its local header"
        return None

    def _confirmed_tar(self, handle: tarfile.TarFile) -> str | None:
        """Every member read early is the member at that place of the whole tar (headers from the
        same offset, data from the same offset, same name, size and type)."""
        members = {m.offset_data: m for m in handle.getmembers()}
        for e in self.read.entries:
            m = members.get(e.data_offset)
            if m is None or not isinstance(e, TarEntry):
                return f"the member {e.name!r} is not where the archive has it"
            if (m.offset, m.name, sources.tar_kind(m)) != (e.offset, e.name, e.kind) or (
                e.kind == "file" and m.size != e.size
            ):
                return f"the archive describes {e.name!r} otherwise than its headers as they arrived"
        return None

    def _hand_on(
        self,
        db: Session,
        stored: StoredAudio,
        source: Path,
        entries: list[sources.Entry],
        meta: dict[str, Any] | None,
    ) -> tuple[Batch, bool]:
        """The checked batch: its request hash set, the archive (``source``: the upload, or a
        compressed tar's sidecar) kept for the background reader's code, which reads the entries not read
        early (``metadata.csv`` attached to the early jobs first); in the request when few are
        left, else in the background."""
        assert self.batch_id is not None and self.beat is not None
        settings = self.settings
        digest = batch_svc.request_digest("archive", self.options, stored.sha256)
        kept = received_files.kept_archive(stored.path, self.batch_id)
        source.rename(kept)
        options = {**batch_svc.batch_options(self.options), "archive": str(kept)}
        try:
            beat = intake.renew(db, self.batch_id, self.beat, [], 0, options=options, request_hash=digest)
            if beat is not None and meta is not None:
                intake.attach_metadata(db, self.batch_id, meta)
            db.commit()
        except BaseException:
            db.rollback()
            kept.rename(source)  # removed by the route (the upload) or by finish (a sidecar)
            self._discard("handing it on failed")
            raise
        if beat is None:
            kept.rename(source)
            return self._lost(db)
        done = {sources.clean_name(e.name) for e in self.read.entries}
        rest = [e for e in entries if e.kind == "file" and sources.clean_name(e.name) not in done]
        if sources.audio_files(rest) <= settings.batch_inline_files:  # else the route submits it
            intake.prepare(self.batch_id, beat, settings)
        batch = db.get(Batch, self.batch_id)
        assert batch is not None
        return batch, True

    def _lost(self, db: Session) -> tuple[Batch, bool]:
        """The batch was cancelled or deleted by its tenant while it uploaded."""
        assert self.batch_id is not None and self.beat is not None
        intake.stopped(db, self.batch_id, self.beat, self.settings)
        batch = db.get(Batch, self.batch_id)
        if batch is None:
            raise ApiError(409, "batch_deleted", "the batch was deleted while its archive uploaded")
        return batch, True

    def _discard(self, why: str) -> None:
        if self.batch_id is None:
            return
        batch_id, self.batch_id = self.batch_id, None
        with sessionmaker_for(self.settings.database_url)() as db:
            batch = db.get(Batch, batch_id)
            if batch is not None:
                jobs = batch_svc.delete_batch(db, batch, self.settings)
                log.info("batch %s: read while it uploaded, removed (%d jobs): %s", batch_id, jobs, why)
