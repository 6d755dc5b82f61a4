"""Unit tests of one module, ``api.services.batch_sources``: a server folder's files are hashed
several at a time, with the same result as one at a time; a file gone since the walk is skipped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from api.services import batch_sources as sources
from api.uploads import StoredAudio
from shared.platform.settings import Settings


def _wav(path: Path, seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    sf.write(path, rng.normal(0, 2000, int(seconds * 8000)).astype(np.int16), 8000, subtype="PCM_16")
    return path.read_bytes()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Recordings with every kind of skip between them, in walk order: a corrupt file before a note,
    a duplicate of an earlier recording, an empty file, a link, a subfolder, metadata.csv."""
    calls = tmp_path / "calls"
    (calls / "sub").mkdir(parents=True)
    a = _wav(calls / "a.wav", 1.0, 1)
    _wav(calls / "b.wav", 2.0, 2)
    (calls / "c_bad.wav").write_bytes(b"RIFF" + os.urandom(300))
    (calls / "d.txt").write_text("a note")
    (calls / "e_copy.wav").write_bytes(a)
    (calls / "f_empty.wav").write_bytes(b"")
    os.symlink(calls / "b.wav", calls / "g_link.wav")
    _wav(calls / "sub" / "h.wav", 0.5, 3)
    (calls / "sub" / "i_copy.wav").write_bytes(a)
    (calls / "metadata.csv").write_text("path,agent\na.wav,ivan\n")
    return calls


def _scan(
    folder: Path, threads: int
) -> tuple[list[tuple[str, list[str], float | None]], list[dict[str, str]], dict]:
    entries = sources.directory_entries(folder, Settings())
    items, skipped, meta = sources.collect(entries, Settings(), sources._hash_in_place, threads=threads)
    return [(i.name, i.names, i.duration) for i in items], skipped, meta


def test_a_folder_scanned_several_files_at_a_time_gives_what_one_at_a_time_gives(folder: Path) -> None:
    one = _scan(folder, 1)
    items, skipped, meta = one
    assert [(name, names) for name, names, _ in items] == [
        ("a.wav", ["a.wav", "e_copy.wav", "sub/i_copy.wav"]),
        ("b.wav", ["b.wav"]),
        ("sub/h.wav", ["sub/h.wav"]),
    ]
    assert [d for _, _, d in items] == pytest.approx([1.0, 2.0, 0.5])
    # skips in entry order, whichever check found them (the probe's among the cheap ones)
    assert [(s["name"], s["reason"].split(":")[0]) for s in skipped] == [
        ("c_bad.wav", "unsupported_format"),
        ("d.txt", "not_audio"),
        ("f_empty.wav", "empty_audio"),
        ("g_link.wav", "link"),
    ]
    assert meta == {"a.wav": {"path": "a.wav", "agent": "ivan"}}
    for threads in (2, 4, 8):
        assert _scan(folder, threads) == one


def test_the_files_are_read_and_hashed_in_parallel(folder: Path) -> None:
    """Two placements must be under way at once, or the barrier breaks."""
    both = threading.Barrier(2, timeout=5)
    seen: set[str] = set()

    def place(entry: sources.Entry, name: str) -> tuple[StoredAudio, bool]:
        if name in ("a.wav", "b.wav"):
            both.wait()
        seen.add(threading.current_thread().name)
        return sources._hash_in_place(entry, name)

    entries = sources.directory_entries(folder, Settings())
    items, _, _ = sources.collect(entries, Settings(), place, threads=2)
    assert len(items) == 3
    assert all(name.startswith("batch-scan") for name in seen)
    one = threading.Barrier(2, timeout=0.5)

    def alone(entry: sources.Entry, name: str) -> tuple[StoredAudio, bool]:
        one.wait()
        return sources._hash_in_place(entry, name)

    with pytest.raises(threading.BrokenBarrierError):  # one at a time: the first waits alone
        sources.collect(entries, Settings(), alone, threads=1)


@pytest.mark.parametrize("threads", [1, 4])
def test_a_file_gone_since_the_walk_is_skipped_not_a_failure(folder: Path, threads: int) -> None:
    entries = sources.directory_entries(folder, Settings())
    (folder / "b.wav").unlink()
    items, skipped, _ = sources.collect(entries, Settings(), sources._hash_in_place, threads=threads)
    assert [i.name for i in items] == ["a.wav", "sub/h.wav"]
    gone = [s for s in skipped if s["name"] == "b.wav"]
    assert gone and gone[0]["reason"].startswith("unreadable: "), skipped


def test_an_archive_whose_extraction_fails_leaves_none_of_its_files(tmp_path: Path, folder: Path) -> None:
    """A place that stores files of ours (an archive's entries): on a failure midway every file it
    stored is removed, and the error is the place's own."""
    stored: list[Path] = []

    def place(entry: sources.Entry, name: str) -> tuple[StoredAudio, bool]:
        if len(stored) == 2:
            raise OSError(28, "No space left on device")
        dest = tmp_path / f"copy-{len(stored)}.wav"
        dest.write_bytes(entry.open().read())
        stored.append(dest)
        return StoredAudio(dest, dest.stat().st_size, str(len(stored))), True

    entries = [
        sources.Entry(e.name, e.size, None, e.kind, e.open)  # not a folder's: no path
        for e in sources.directory_entries(folder, Settings())
    ]
    with pytest.raises(OSError, match="No space"):
        sources.collect(entries, Settings(), place)
    assert len(stored) == 2 and not any(p.exists() for p in stored)


def test_an_entry_the_request_would_refuse_the_batch_for_is_one_skip_in_the_background(
    tmp_path: Path, folder: Path
) -> None:
    """``collect(..., lenient=True)``, as the background reader calls it: an entry that raises (an
    archive entry holding more than it declares) is skipped with its reason, the others are read and
    deduped as before, and no extracted copy of a duplicate stays on disk."""
    from api.errors import ApiError

    made: list[Path] = []

    def place(entry: sources.Entry, name: str) -> tuple[StoredAudio, bool]:
        if name == "b.wav":
            raise ApiError(400, "archive_bomb", f"the entry {name!r} holds more than it declares")
        dest = tmp_path / f"x{len(made)}.wav"
        dest.write_bytes(entry.open().read())
        made.append(dest)
        found = sources._hash_in_place(
            sources.Entry(name, dest.stat().st_size, None, "file", entry.open, dest), name
        )
        return StoredAudio(dest, found[0].size, found[0].sha256), True

    entries = sources.directory_entries(folder, Settings())
    items, skipped, _ = sources.collect(entries, Settings(), place, lenient=True)
    assert [(i.name, i.names) for i in items] == [
        ("a.wav", ["a.wav", "e_copy.wav", "sub/i_copy.wav"]),
        ("sub/h.wav", ["sub/h.wav"]),
    ]
    assert {s["name"]: s["reason"].split(":")[0] for s in skipped}["b.wav"] == "archive_bomb"
    assert sorted(p.name for p in tmp_path.glob("x*.wav")) == sorted(i.stored.path.name for i in items)


def test_entries_placed_ahead_of_a_failure_are_removed_too(tmp_path: Path, folder: Path) -> None:
    """Several at a time, entries after the one that fails may already be stored when it fails:
    those, never handed on to the caller, are removed as well."""
    stored: list[Path] = []
    lock = threading.Lock()
    later_stored = threading.Event()

    def place(entry: sources.Entry, name: str) -> tuple[StoredAudio, bool]:
        if name == "b.wav":
            assert later_stored.wait(5)  # an entry after this one is on disk before this one fails
            raise OSError(28, "No space left on device")
        dest = tmp_path / f"copy-{name.replace('/', '_')}"
        dest.write_bytes(entry.open().read())
        with lock:
            stored.append(dest)
        if name == "sub/h.wav":
            later_stored.set()
        return StoredAudio(dest, dest.stat().st_size, name), True

    entries = [
        sources.Entry(e.name, e.size, None, e.kind, e.open)  # not a folder's: no path
        for e in sources.directory_entries(folder, Settings())
    ]
    with pytest.raises(OSError, match="No space"):
        sources.collect(entries, Settings(), place, threads=4)
    assert tmp_path / "copy-sub_h.wav" in stored
    assert [p.name for p in stored if p.exists()] == []


def _zip_of(folder: Path, dest: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, str(path.relative_to(folder)))
    return dest


def _tar_of(folder: Path, dest: Path, mode: str = "w") -> Path:
    import tarfile

    with tarfile.open(dest, mode) as tf:  # type: ignore[call-overload]
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tf.add(path, str(path.relative_to(folder)))
    return dest


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_archive_is_extracted_several_entries_at_a_time_with_what_one_at_a_time_gives(
    tmp_path: Path, folder: Path, kind: str
) -> None:
    """A ZIP's entries, and an uncompressed tar's members (read by offset), are copied and hashed
    by several threads (a compressed tar's in order, one stream); the recordings, their names, the
    skips and the files left on disk are those of one at a time."""
    archive = (
        _zip_of(folder, tmp_path / "calls.zip") if kind == "zip" else _tar_of(folder, tmp_path / "calls.tar")
    )
    results = []
    for threads in (1, sources.SCAN_THREADS, 4):
        settings = Settings(data_dir=tmp_path / f"data-{threads}")
        handle, entries = sources.list_archive(archive, settings)
        assert sources.archive_threads(handle) == sources.SCAN_THREADS
        try:
            items, skipped, meta = sources.collect(
                entries, settings, sources.extracted(settings), threads=threads
            )
        finally:
            handle.close()
        on_disk = sorted(p.name for p in settings.audio_path.iterdir())
        assert on_disk == sorted(i.stored.path.name for i in items)  # duplicates' and bad copies gone
        results.append(([(i.name, i.names, i.stored.sha256) for i in items], skipped, meta))
    assert results[0][0][0][1] == ["a.wav", "e_copy.wav", "sub/i_copy.wav"]
    assert results[1] == results[0] and results[2] == results[0]
    packed = _tar_of(folder, tmp_path / "calls.tar.gz", "w:gz")
    handle, _ = sources.list_archive(packed, Settings(data_dir=tmp_path / "data-tar-gz"))
    assert sources.archive_threads(handle) == 1
    handle.close()
