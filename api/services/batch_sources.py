"""Where a batch's recordings come from: an archive (ZIP or tar), a folder under the server's
``TONE_BATCH_ROOT``, or a JSON manifest of URLs; the guard rails on each.

An archive is checked whole before anything is extracted (entry count, declared sizes, compression
ratio, paths); extraction counts the bytes actually read; a folder is walked without following
links, its files used in place (never deleted: job DELETE removes only files under the audio
directory); a manifest's URLs all pass the SSRF guard first. On any refusal nothing is created and
every extracted file is removed. ZIP names without the UTF-8 flag are read as UTF-8, else CP866
(Russian Windows); ``metadata.csv`` may be UTF-8 or Windows-1251, comma-, semicolon- or tab-separated.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast
from urllib.parse import unquote, urlsplit

from api.errors import ApiError
from api.schemas import BatchRequest
from api.services import jobs as svc
from api.uploads import PIECE, StoredAudio, audio_file_path, remove_quietly, save_stream
from shared.asr.formats import AUDIO_SUFFIXES
from shared.platform.settings import Settings

MAX_RATIO = 200
METADATA_CSV = "metadata.csv"
METADATA_LIMIT = 64 * 1024 * 1024
# files of a server folder hashed and probed at once: reading and SHA-256 release the GIL, so this
# scales with cores (and with a disk's queue depth for a folder not in the page cache)
SCAN_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class Entry:
    name: str
    size: int  # declared uncompressed size
    compressed: int | None  # declared compressed size (zip), None for tar
    kind: str  # file | dir | link | device
    open: Callable[[], IO[bytes]]
    path: Path | None = None  # a file in a folder (used in place), not in an archive
    unreadable: str | None = None  # why its bytes cannot be read (a skip's reason): a password, a method


@dataclass
class Item:
    name: str
    stored: StoredAudio
    duration: float | None
    names: list[str] = field(default_factory=list)
    owned: bool = True  # extracted by us (removed on refusal); False: a file used in place


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    return ".." in PurePosixPath(norm).parts


def clean_name(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _zip_entries(zf: zipfile.ZipFile) -> list[Entry]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            kind = "device"
        else:
            kind = "file"
        opener = partial(zf.open, info)
        unreadable = _zip_unreadable(info)
        out.append(
            Entry(zip_name(info), info.file_size, info.compress_size, kind, opener, unreadable=unreadable)
        )
    return out


# what ``zipfile`` reads: stored, deflate, bzip2, LZMA; the others by name, for the skip's reason
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_OTHER_METHODS = {9: "Deflate64", 93: "Zstandard", 95: "XZ", 96: "JPEG", 97: "WavPack", 98: "PPMd"}


def _zip_unreadable(info: zipfile.ZipInfo) -> str | None:
    """Why an entry's bytes cannot be read, or None. Windows' compressed folders write Deflate64
    for large files and many archivers offer a password: those entries are skipped with the reason
    (they made the request answer 500: ``zipfile`` refuses them only when opened)."""
    if info.flag_bits & 0x1 or info.compress_type == 99:  # 99: WinZip's AES, always with a password
        return "encrypted: the entry is password-protected; send the archive without a password"
    if info.compress_type not in _ZIP_METHODS:
        method = _OTHER_METHODS.get(info.compress_type, "unknown")
        return (
            f"unsupported_compression: method {info.compress_type} ({method}); "
            "store or deflate it (any ZIP tool's default) and send it again"
        )
    return None


def zip_name(info: zipfile.ZipInfo) -> str:
    """An entry's name as its maker meant it. Without the UTF-8 flag (0x800) Python reads a name as
    CP437, but Windows' own compressed folders write the OEM code page (CP866 on Russian Windows)
    and some tools write UTF-8 without setting the flag: UTF-8 first, then CP866."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp866")


def _tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(member)
    if f is None:
        raise OSError(f"{member.name}: not a regular file")
    return f


class SpanReader(io.RawIOBase):
    """``size`` bytes at ``offset`` of ``fd``: a tar member's data in an uncompressed tar (an
    upload, a compressed tar's sidecar), read with ``pread``, so readers of several members share
    no file position. ``owned``: the fd is closed with the reader."""

    def __init__(self, fd: int, offset: int, size: int, name: str, owned: bool = False) -> None:
        self.fd, self.pos, self.left, self.name, self.owned = fd, offset, size, name, owned

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        want = min(PIECE if n is None or n < 0 else n, self.left)
        if not want:
            return b""
        out = os.pread(self.fd, want, self.pos)
        if not out:
            raise tarfile.ReadError(f"{self.name}: the archive ends inside it")
        self.pos += len(out)
        self.left -= len(out)
        return out

    def close(self) -> None:
        if self.owned and not self.closed:
            os.close(self.fd)
        super().close()


def _tar_span(path: str, member: tarfile.TarInfo) -> IO[bytes]:
    fd = os.open(path, os.O_RDONLY)
    return cast(IO[bytes], SpanReader(fd, member.offset_data, member.size, member.name, owned=True))


def _uncompressed(tf: tarfile.TarFile) -> bool:
    """A tar read straight from its file (``tarfile`` wraps a compressed one in its decompressor)."""
    return isinstance(tf.fileobj, io.BufferedReader) and isinstance(tf.name, str)


def tar_kind(member: tarfile.TarInfo) -> str:
    """A tar member's :attr:`Entry.kind`: dir, link (symbolic or hard), file or device."""
    if member.isdir():
        return "dir"
    if member.issym() or member.islnk():
        return "link"
    return "file" if member.isfile() else "device"


def _tar_entries(tf: tarfile.TarFile, settings: Settings, archive_size: int) -> list[Entry]:
    """The members, read one header at a time, stopping at the first limit the entries so far
    cross (count, an entry's or the total size, the ratio): reaching the next header of a tar.gz
    decompresses the member before it, so a bomb is refused after its first header, not after
    gigabytes of zeros. :func:`check_entries` then refuses what was listed."""
    out: list[Entry] = []
    total = 0
    # an uncompressed tar's regular members are read by offset, several at a time (archive_threads)
    path = str(tf.name) if _uncompressed(tf) else None
    while (m := tf.next()) is not None:
        kind = tar_kind(m)
        opener: Callable[[], IO[bytes]] = partial(_tar_member, tf, m)
        if path is not None and m.isreg() and not m.issparse():
            opener = partial(_tar_span, path, m)
        out.append(Entry(m.name, m.size, None, kind, opener))
        if kind == "file":
            total += m.size
        if (
            len(out) > settings.batch_max_entries
            or m.size > settings.max_upload_bytes
            or total > settings.batch_max_total_bytes
            or _bomb_ratio(total, archive_size)
        ):
            break  # enough to refuse: read no further
    else:
        _read_to_the_end(tf)
    return out


def _read_to_the_end(tf: tarfile.TarFile) -> None:
    """A compressed tar read on past its end blocks to the end of its stream, where gzip keeps the
    CRC of all of it (``BadGzipFile``, an ``OSError``, when a byte was damaged): ``tarfile`` stops at
    the end blocks, so a member's damaged data was extracted wrong without a word. Only the record's
    padding after the end blocks is left to read."""
    stream = tf.fileobj
    if not isinstance(stream, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)):
        return
    try:
        while stream.read(PIECE):
            pass
    except gzip.BadGzipFile as exc:
        # bytes after the last member that are no gzip member: every member's CRC was checked by
        # then, and gzip(1) and tar take such a file with a warning ("trailing garbage ignored")
        if not str(exc).startswith("Not a gzipped file"):
            raise
    except EOFError:  # a stream cut after the tar's end blocks (xz's null padding reads so too):
        pass  # every member is whole


def _bomb_ratio(expanded: int, packed: int) -> bool:
    """More than ``MAX_RATIO`` times the packed size, once past 1 MiB (small files compress well)."""
    return expanded > 1024 * 1024 and expanded > MAX_RATIO * max(packed, 1)


def open_archive(path: Path, settings: Settings, packed: int | None = None) -> tuple[Any, list[Entry]]:
    """``(the open archive, its entries)``; 415 ``unsupported_archive`` for anything else.
    ``packed``: the size its expansion is measured against (a tar.gz's, when its inflated tar is
    read), else its own."""
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
            return zf, _zip_entries(zf)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ApiError(415, "unsupported_archive", f"the ZIP archive cannot be read: {exc}") from None
    try:
        tf = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by extract)
        return tf, _tar_entries(tf, settings, path.stat().st_size if packed is None else packed)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ApiError(
            415,
            "unsupported_archive",
            f"the upload is not a whole, readable ZIP or tar (.gz, .bz2, .xz) archive ({exc})",
        ) from None


def check_entries(entries: list[Entry], archive_size: int | None, settings: Settings) -> None:
    """Refuse the whole archive before extracting anything (bombs, oversize, unsafe paths).
    ``archive_size`` None: not an archive (a folder), no compression ratio to check."""
    if len(entries) > settings.batch_max_entries:
        raise ApiError(
            413,
            "too_many_entries",
            f"the archive has {len(entries)} entries, over the limit of {settings.batch_max_entries}",
        )
    total = 0
    for e in entries:
        if _unsafe(e.name):
            raise ApiError(400, "unsafe_path", f"the archive entry {e.name!r} has an absolute or '..' path")
        if e.kind != "file":
            continue
        if e.size > settings.max_upload_bytes:
            raise ApiError(
                413,
                "archive_too_large",
                f"the entry {e.name!r} holds {e.size} bytes, over the limit of {settings.max_upload_bytes}",
            )
        if e.compressed is not None and _bomb_ratio(e.size, e.compressed):
            raise ApiError(
                400, "archive_bomb", f"the entry {e.name!r} expands more than {MAX_RATIO} times: refused"
            )
        total += e.size
    if total > settings.batch_max_total_bytes:
        raise ApiError(
            413,
            "archive_too_large",
            f"the archive expands to {total} bytes, over the limit of {settings.batch_max_total_bytes}",
        )
    # the whole archive too (ZIP and tar alike): many small entries each under the per-entry check
    if archive_size is not None and _bomb_ratio(total, archive_size):
        raise ApiError(400, "archive_bomb", f"the archive expands more than {MAX_RATIO} times: refused")


_MISREAD = (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError, lzma.LZMAError)


def _misread(exc: BaseException) -> bool:
    """An entry's bytes that do not decompress as its method says (``bz2`` raises a bare
    ``OSError``, "Invalid data stream"), not a failing disk (an ``OSError`` with an errno)."""
    return isinstance(exc, _MISREAD) or (isinstance(exc, OSError) and exc.errno is None)


def _limited(opener: Callable[[], IO[bytes]], declared: int, name: str) -> Iterator[bytes]:
    """An entry's bytes, never more than it declares. A ZIP entry whose headers understate it
    ends at the declared size with a wrong CRC (``BadZipFile``), and one whose local header names
    another file than the central directory cannot be opened: refused as a bomb, not a 500."""
    seen = 0
    try:
        source = opener()
    except (*_MISREAD, OSError) as exc:
        if not _misread(exc):
            raise
        raise ApiError(
            400, "archive_bomb", f"the entry {name!r} does not match its headers ({exc}): refused"
        ) from None
    with source:
        while True:
            try:
                piece = source.read(PIECE)
            except (*_MISREAD, OSError) as exc:
                if not _misread(exc):
                    raise
                raise ApiError(
                    400, "archive_bomb", f"the entry {name!r} does not match its headers ({exc}): refused"
                ) from None
            if not piece:
                return
            seen += len(piece)
            if seen > declared:
                raise ApiError(400, "archive_bomb", f"the entry {name!r} holds more than it declares")
            yield piece


def read_metadata(entry: Entry) -> dict[str, dict[str, str]]:
    """``metadata.csv``'s rows; 400 ``invalid_metadata`` when Python's CSV reader refuses it (a
    binary file so named, a field over its 128 KiB limit: before, a 500), ``archive_bomb`` when its
    bytes do not match its headers."""
    raw = b"".join(_limited(entry.open, min(entry.size, METADATA_LIMIT), entry.name))
    try:
        return parse_metadata_csv(raw)
    except csv.Error as exc:
        raise ApiError(
            400, "invalid_metadata", f"metadata.csv cannot be read as a CSV table ({exc})"
        ) from None


def metadata_of(entry: Entry) -> tuple[dict[str, dict[str, str]], dict[str, str] | None]:
    """``(metadata.csv's rows, None)``, or ``({}, the skip that says why none are attached)``: a
    metadata file that cannot be read (password-protected, damaged, not a CSV table) costs the
    batch its metadata, never its recordings."""
    if entry.unreadable is not None:
        return {}, {"name": clean_name(entry.name), "reason": entry.unreadable}
    try:
        return read_metadata(entry), None
    except ApiError as exc:
        return {}, {"name": clean_name(entry.name), "reason": f"{exc.code}: {exc.message}"}


def parse_metadata_csv(raw: bytes) -> dict[str, dict[str, str]]:
    """``metadata.csv`` as spreadsheets write it: UTF-8 (with or without a BOM) or, failing that,
    Windows-1251 (Excel's "CSV" on Russian Windows); comma, semicolon (Excel's separator where the
    decimal mark is a comma) or tab. Rows by their first column, the recording's path."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1251", errors="replace")
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count) if any(d in header for d in ",;\t") else ","
    rows = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    first = rows.fieldnames[0] if rows.fieldnames else None
    return {clean_name(row[first]): dict(row) for row in rows if first and row.get(first)}


def _probe(path: Path, settings: Settings) -> tuple[str | None, float | None]:
    """``(reason to skip or None, duration or None)``, from the headers only."""
    try:
        from shared.asr.audio import probe
    except ImportError:
        return None, None
    try:
        info = probe(path)
    except Exception as exc:
        return getattr(exc, "code", "corrupt_audio"), None
    if info.duration > settings.max_audio_seconds:
        return "audio_too_long", info.duration
    return None, info.duration


def has_audio_suffix(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES


def audio_files(entries: list[Entry]) -> int:
    """How many entries :func:`collect` would read and probe: regular files with an audio extension."""
    return sum(1 for e in entries if e.kind == "file" and has_audio_suffix(e.name))


def _placed(
    place: Callable[[Entry, str], tuple[StoredAudio, bool]], lenient: bool, todo: tuple[Entry, str]
) -> tuple[StoredAudio, bool] | str:
    """``place(entry, name)``, or the reason to skip the entry: a folder's file that went away or
    cannot be read since the walk (not a 500), and with ``lenient`` an entry that would refuse the
    whole batch (``ApiError``: one that holds more than it declares)."""
    entry, name = todo
    try:
        return place(entry, name)
    except OSError as exc:
        if entry.path is None:  # extracting an archive's entry: our own disk failed, not the entry
            raise
        return f"unreadable: {exc.strerror or exc}"
    except ApiError as exc:
        if not lenient:
            raise
        return f"{exc.code}: {exc.message}"


def _placements(
    place: Callable[[Entry, str], tuple[StoredAudio, bool]],
    todo: list[tuple[Entry, str]],
    threads: int,
    lenient: bool,
) -> Generator[tuple[StoredAudio, bool] | str, None, None]:
    """Every entry placed, in order; with ``threads`` > 1 that many at a time, ahead of the caller.
    When the caller stops early (an error, a refusal), the entries not yet started are cancelled and
    the files of ours placed ahead but never handed on are removed: nothing stays half-written."""
    one = partial(_placed, place, lenient)
    if threads <= 1 or len(todo) <= 1:
        yield from map(one, todo)
        return
    with ThreadPoolExecutor(min(threads, len(todo)), thread_name_prefix="batch-scan") as pool:
        futures = [pool.submit(one, t) for t in todo]
        handed = 0
        try:
            for future in futures:
                placed = future.result()
                handed += 1
                yield placed
        finally:
            left = futures[handed:]
            for future in left:
                future.cancel()
            for future in left:
                if future.cancelled() or future.exception() is not None:
                    continue
                placed = future.result()
                if not isinstance(placed, str) and placed[1]:
                    remove_quietly(placed[0].path)


def collect(
    entries: list[Entry],
    settings: Settings,
    place: Callable[[Entry, str], tuple[StoredAudio, bool]],
    threads: int = 1,
    lenient: bool = False,
) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """``(distinct recordings, skipped, metadata rows)`` of checked entries: the skip rules, the
    dedupe by content and ``metadata.csv``, shared by archives and folders. ``place(entry, name)``
    stores or finds one file: ``(its audio, whether it is ours to remove)``; with ``threads`` > 1,
    that many files are placed (read and hashed: both release the GIL) ahead of the probe, which
    stays in this thread (its Python would only fight the GIL). The result is the same either way:
    skips in entry order, a duplicate's names under its first entry. ``lenient``: an entry that
    would refuse the whole batch is one skip with its reason instead (a batch read in the
    background, whose neighbours are already being transcribed). On any error every file placed so
    far that is ours is removed."""
    skips: list[tuple[int, dict[str, str]]] = []  # (entry index, skip): reported in entry order
    meta: dict[str, Any] = {}
    todo: list[tuple[int, Entry, str]] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        name = clean_name(e.name)
        if e.kind == "dir":
            continue
        if e.kind in ("link", "device"):
            skips.append((i, {"name": name, "reason": f"{e.kind}: only regular files are read"}))
            continue
        if name == METADATA_CSV:
            meta, skip = metadata_of(e)
            skips.extend([(i, skip)] if skip is not None else [])
            continue
        if e.unreadable is not None:
            skips.append((i, {"name": name, "reason": e.unreadable}))
            continue
        if name in seen:
            skips.append((i, {"name": name, "reason": "duplicate_name"}))
            continue
        seen.add(name)
        if not has_audio_suffix(name):
            skips.append((i, {"name": name, "reason": "not_audio: the extension is not an audio one"}))
            continue
        if e.size == 0:
            skips.append((i, {"name": name, "reason": "empty_audio"}))
            continue
        todo.append((i, e, name))
    items: dict[str, Item] = {}
    placements = _placements(place, [(e, name) for _, e, name in todo], threads, lenient)
    try:
        for (i, _, name), placed in zip(todo, placements, strict=True):
            if isinstance(placed, str):
                skips.append((i, {"name": name, "reason": placed}))
                continue
            stored, owned = placed
            reason, duration = _probe(stored.path, settings)
            if reason:
                if owned:
                    remove_quietly(stored.path)
                skips.append((i, {"name": name, "reason": reason}))
            elif stored.sha256 in items:
                if owned:
                    remove_quietly(stored.path)
                items[stored.sha256].names.append(name)
            else:
                items[stored.sha256] = Item(name, stored, duration, [name], owned)
    except BaseException:
        discard(list(items.values()))
        raise
    finally:
        placements.close()  # a failure stops the files still queued in the pool
    return list(items.values()), [skip for _, skip in sorted(skips, key=lambda s: s[0])], meta


def discard(items: list[Item]) -> None:
    for item in items:
        if item.owned:
            remove_quietly(item.stored.path)


def extracted(settings: Settings) -> Callable[[Entry, str], tuple[StoredAudio, bool]]:
    """The ``place`` of an archive's entries: each written to the audio directory (ours)."""

    def place(e: Entry, name: str) -> tuple[StoredAudio, bool]:
        dest = audio_file_path(settings.audio_path, str(uuid.uuid4()), name)
        return save_stream(_limited(e.open, e.size, name), dest, settings.max_upload_bytes), True

    return place


def list_archive(archive: Path, settings: Settings, packed: int | None = None) -> tuple[Any, list[Entry]]:
    """``(the open archive, its entries)``, the whole archive checked (bombs, oversize, paths);
    ``packed`` as for :func:`open_archive`."""
    size = archive.stat().st_size if packed is None else packed
    handle, entries = open_archive(archive, settings, size)
    try:
        check_entries(entries, size, settings)
    except BaseException:
        handle.close()
        raise
    return handle, entries


def archive_threads(handle: Any) -> int:
    """How many of an archive's entries are extracted at once: a ZIP's entries are read through one
    locked file (each read seeks to its own entry), and an uncompressed tar's members by offset
    (:class:`SpanReader`), so several threads copy and hash them at once; a compressed tar is one
    stream, read in order."""
    if isinstance(handle, zipfile.ZipFile) or (isinstance(handle, tarfile.TarFile) and _uncompressed(handle)):
        return SCAN_THREADS
    return 1


def extract(
    handle: Any, entries: list[Entry], settings: Settings
) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """A listed archive's ``(distinct recordings, skipped, metadata rows)``; on any refusal nothing
    stays on disk. Closes the archive."""
    try:
        return collect(entries, settings, extracted(settings), threads=archive_threads(handle))
    finally:
        handle.close()


# -- a folder under TONE_BATCH_ROOT ------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_directory(relative: str, settings: Settings) -> Path:
    """The folder ``relative`` names under ``settings.batch_root``, resolved; it must stay inside.

    403 ``directory_not_allowed`` when no root is configured (or it overlaps the audio directory:
    jobs' uploads are not a batch source); 400 ``unsafe_path`` for absolute or ``..`` paths and for
    links that lead out of the root; 404 ``directory_not_found``."""
    if settings.batch_root is None:
        raise ApiError(
            403,
            "directory_not_allowed",
            "batches from server folders are off: an administrator sets TONE_BATCH_ROOT to allow them",
        )
    root = settings.batch_root.resolve()
    audio = settings.audio_path.resolve()
    if _inside(root, audio):
        raise ApiError(403, "directory_not_allowed", "the batch root is inside the audio directory: refused")
    text = relative.strip()
    if not text or "\x00" in text or _unsafe(text):
        raise ApiError(
            400, "unsafe_path", "directory must be a relative path inside the batch root, without '..'"
        )
    try:
        folder = (root / clean_name(text)).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ApiError(404, "directory_not_found", f"no folder {text!r} under the batch root") from None
    if not _inside(folder, root):
        raise ApiError(400, "unsafe_path", f"{text!r} leads out of the batch root (a link): refused")
    if not folder.is_dir():
        raise ApiError(404, "directory_not_found", f"{text!r} is not a folder under the batch root")
    if _inside(folder, audio) or _inside(audio, folder):
        raise ApiError(
            403, "directory_not_allowed", f"{text!r} holds the platform's audio directory: refused"
        )
    return folder


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "device"


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def directory_entries(folder: Path, settings: Settings) -> list[Entry]:
    """Every entry under ``folder`` (links listed, never followed), by path; 413
    ``too_many_entries`` as soon as there are more than the limit (the walk stops there)."""
    out: list[Entry] = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = Path(top) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            rel = path.relative_to(folder).as_posix()
            out.append(Entry(rel, st.st_size, None, _kind(st.st_mode), _opener(path), path))
            if len(out) > settings.batch_max_entries:
                return out  # enough to refuse
    return out


def _hash_in_place(entry: Entry, name: str) -> tuple[StoredAudio, bool]:
    """A folder's file as it is: hashed (for the dedupe), not copied, never ours to remove."""
    assert entry.path is not None
    digest = hashlib.sha256()
    size = 0
    for piece in _limited(entry.open, entry.size, name):
        digest.update(piece)
        size += len(piece)
    return StoredAudio(entry.path, size, digest.hexdigest()), False


def list_directory(folder: Path, settings: Settings) -> list[Entry]:
    """A folder's entries, its limits checked (413 ``too_many_entries``, ``archive_too_large``)."""
    entries = directory_entries(folder, settings)
    check_entries(entries, None, settings)
    return entries


def scan_directory(
    entries: list[Entry], settings: Settings
) -> tuple[list[Item], list[dict[str, str]], dict[str, Any]]:
    """A listed folder's recordings, read in place (hashed and probed, not copied), several files
    at a time: a call center's folder is thousands of files, each read whole for the dedupe."""
    return collect(entries, settings, _hash_in_place, threads=SCAN_THREADS)


# -- a JSON manifest of URLs ---------------------------------------------------------------------------

_NAME_CHARS = re.compile(r"[^\w.\-/ ]+")


def url_name(url: str) -> str:
    """A safe relative name for a URL item: ``host/path`` with odd characters replaced."""
    parts = urlsplit(url)
    raw = f"{parts.hostname or 'item'}/{unquote(parts.path)}"
    cleaned = [_NAME_CHARS.sub("_", p) for p in raw.split("/")]
    return "/".join(p for p in cleaned if p not in ("", ".", "..")) or "item"


def _unique(name: str, used: set[str]) -> str:
    if name not in used:
        return name
    path = PurePosixPath(name)
    n = 2
    while (candidate := str(path.with_name(f"{path.stem}~{n}{path.suffix}"))) in used:
        n += 1
    return candidate


def check_manifest(body: BatchRequest, settings: Settings) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(name, url, metadata)`` per item, every URL checked by the SSRF guard (each host once).

    413 ``too_many_entries``; 422 ``invalid_request`` (no items, not http(s), a duplicate or unsafe
    name, a host that does not resolve); 400 ``url_not_allowed`` for a non-public address unless
    TONE_ALLOW_PRIVATE_URLS. Nothing is created on any of them."""
    from shared.platform.netguard import UrlError, check_url

    items = body.items or []
    if not items:
        raise ApiError(422, "invalid_request", "items must hold at least one {audio_url}")
    if len(items) > settings.batch_max_entries:
        raise ApiError(
            413,
            "too_many_entries",
            f"the manifest has {len(items)} items, over the limit of {settings.batch_max_entries}",
        )
    checked: dict[tuple[str, str, int | None], None] = {}
    explicit = {clean_name(i.name) for i in items if i.name}
    used: set[str] = set()
    out = []
    for n, item in enumerate(items):
        where = f"items[{n}]"
        try:
            url = svc.validate_audio_url(item.audio_url)
        except ApiError as exc:
            raise exc.at(f"{where}.audio_url") from None
        parts = urlsplit(url)
        try:
            host = (parts.scheme, parts.hostname or "", parts.port)
        except ValueError:
            raise ApiError(422, "invalid_request", f"{where}.audio_url: the port is not valid") from None
        if host not in checked:
            try:
                check_url(url, allow_private=settings.allow_private_urls)
            except UrlError as exc:
                code, status = (
                    ("url_not_allowed", 400) if exc.code == "url_forbidden" else ("invalid_request", 422)
                )
                raise ApiError(status, code, f"{where}.audio_url: {exc.message}") from None
            checked[host] = None
        if item.name:
            if _unsafe(item.name) or not clean_name(item.name):
                raise ApiError(422, "invalid_request", f"{where}.name must be a relative path without '..'")
            name = clean_name(item.name)
            if name in used:
                raise ApiError(422, "invalid_request", f"{where}.name {name!r} is used by another item")
        else:
            name = _unique(url_name(url), used | explicit)
        used.add(name)
        out.append((name, url, item.metadata))
    return out
