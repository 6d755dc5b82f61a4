"""``tone-platform batch``: a directory (or archive) of recordings in, one transcript file per recording
and format out, through the public HTTP API alone, so that it works against any deployment.

It is built to be interrupted. The upload carries an ``Idempotency-Key`` derived from the content
(and the options), so a retried upload gets the batch the first one created. ``OUT/.tone-batch.json``
records the server, the batch id and the hash of the inputs as soon as they are known (written to a
temporary file and renamed, so it is whole or absent); a second run with the same inputs reads it
and resumes polling or downloading that batch: nothing is uploaded or transcribed twice. Inputs that
changed since are refused until ``--new`` says a new batch is meant.

Exit codes: 0 every recording transcribed, 1 some failed, 2 usage or server errors, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import stat
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import httpx  # imported when a Client is made: `tone-platform transcribe` works without it

from shared.asr.formats import AUDIO_SUFFIXES, FORMATS
from shared.platform.statuses import FINAL_STATUSES
from shared.platform.zip_sink import PipeSink

STATE_NAME = ".tone-batch.json"
TMP_PREFIX = ".tone-batch-"
METADATA_CSV = "metadata.csv"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# skipped entries that are not a recording's failure (the server lists them, nothing was lost)
HARMLESS_SKIPS = ("not_audio", "duplicate_name", "link", "device")
PIECE = 1024 * 1024
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed times: packing the same files twice gives the same bytes
EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class BatchError(Exception):
    """Ends the command with exit code 2 and this message."""


class ServerError(BatchError):
    """An error answer of the server, ``{"error": {"code", "message"}}``, in words."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server answered {status}: {message} [{code}]")
        self.status = status
        self.code = code
        self.message = message


def _say(message: str) -> None:
    print(f"tone-platform batch: {message}", file=sys.stderr, flush=True)


# -- inputs: scan, hash, pack -----------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def scan_dir(root: Path) -> list[tuple[str, Path]]:
    """``(path in the archive, file)`` of every audio file under ``root`` (and ``metadata.csv`` at its
    root), sorted; hidden files and directories are left out (``.DS_Store``, ``.git``, our own state)."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            path = base / name
            rel = path.relative_to(root).as_posix()
            audio = PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES
            if (audio or rel == METADATA_CSV) and path.is_file():
                found.append((rel, path))
    return sorted(found)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _manifest_line(rel: str, size: int, digest: str) -> bytes:
    return f"{rel}\0{size}\0{digest}\n".encode()


def dir_hash(files: list[tuple[str, Path]]) -> str:
    """The inputs' identity: every path with its size and content hash (what is packed, nothing else)."""
    total = hashlib.sha256()
    for rel, path in files:
        total.update(_manifest_line(rel, path.stat().st_size, _file_digest(path)))
    return total.hexdigest()


class ZipStream(io.RawIOBase):
    """A directory's files as one ZIP, made as it is read and never stored: stored entries (audio
    is compressed already or barely shrinks), relative paths, fixed times and modes (the same files
    give the same bytes, so a retried upload carries the same request), every entry's sizes after
    its data, as ``zipfile`` writes to a pipe (the server follows such entries while they upload).
    ``sent``: the files' bytes read so far; ``digest``, at the end: :func:`dir_hash` of what was
    sent."""

    def __init__(self, files: list[tuple[str, Path]]) -> None:
        super().__init__()
        self.sent = 0
        self.digest: str | None = None
        self._pieces = self._make(files)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _make(self, files: list[tuple[str, Path]]) -> Iterator[bytes]:
        total = hashlib.sha256()
        sink = PipeSink()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]
            for rel, path in files:
                info = zipfile.ZipInfo(rel, ZIP_EPOCH)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.file_size = path.stat().st_size
                digest, size = hashlib.sha256(), 0
                with path.open("rb") as f, zf.open(info, "w", force_zip64=info.file_size > 2**31) as member:
                    while piece := f.read(PIECE):
                        digest.update(piece)
                        member.write(piece)
                        size += len(piece)
                        self.sent += len(piece)
                        yield sink.take()
                total.update(_manifest_line(rel, size, digest.hexdigest()))
                yield sink.take()  # the entry's data descriptor
        yield sink.take()  # the central directory
        self.digest = total.hexdigest()


def idempotency_key(input_hash: str, options: dict[str, Any], salt: str = "") -> str:
    """The same inputs and options give the same key, so a retried upload finds the first batch;
    ``salt`` (``--new``) asks for a batch of its own."""
    body = json.dumps({"inputs": input_hash, "options": options, "salt": salt}, sort_keys=True)
    return "tone-batch-" + hashlib.sha256(body.encode()).hexdigest()


# -- the state file -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds either its old content or ``data``, never a part (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BatchError(f"{path} cannot be read ({exc}); remove it or pass --new") from None
    return state if isinstance(state, dict) else None


def save_state(out: Path, state: dict[str, Any]) -> None:
    write_atomic(out / STATE_NAME, (json.dumps(state, indent=2, ensure_ascii=False) + "\n").encode())


# -- the server ---------------------------------------------------------------------------------------


class Client:
    """The public API with the caller's key. GETs are retried through restarts and rate limits (a
    batch can take hours, a server can be redeployed meanwhile); errors become :class:`ServerError`."""

    def __init__(self, server: str, key: str | None, patience: float = 300.0) -> None:
        import httpx

        self.transport_error = httpx.TransportError
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(60.0, connect=15.0, read=3600.0, write=3600.0)
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        self.has_key = bool(key)
        self.patience = patience

    def close(self) -> None:
        self.http.close()

    def _refused(self, response: httpx.Response) -> NoReturn:
        try:
            err = response.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"http_{response.status_code}", response.text[:200] or response.reason_phrase
        if response.status_code == 401:
            if not self.has_key:
                raise BatchError(
                    f"the server wants an API key: give it with --api-key or TONE_API_KEY ({message})"
                )
            raise BatchError(
                f"the server refused the API key: {message}. Give a valid key with --api-key or TONE_API_KEY"
            )
        raise ServerError(response.status_code, code, message)

    def send(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One call; when ``retry``, connection failures, 502-504 and 429 are waited out (up to
        ``patience`` seconds in a row). Error answers raise."""
        deadline = time.monotonic() + self.patience
        wait = 1.0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except self.transport_error as exc:
                if not retry or time.monotonic() > deadline:
                    raise BatchError(f"cannot reach the server at {self.server}: {exc}") from None
                time.sleep(wait)
                wait = min(wait * 2, 15.0)
                continue
            if retry and response.status_code in (429, 502, 503, 504) and time.monotonic() < deadline:
                after = response.headers.get("Retry-After", "")
                time.sleep(float(after) if after.replace(".", "", 1).isdigit() else wait)
                wait = min(wait * 2, 15.0)
                continue
            if response.status_code >= 400:
                self._refused(response)
            return response

    def get_json(self, path: str, **params: Any) -> Any:
        return self.send("GET", path, params=params or None).json()

    def download(self, path: str, dest: Path, **params: Any) -> None:
        """Stream a GET to ``dest`` (a temporary file renamed when whole)."""
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=TMP_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, self.http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    self._refused(response)
                for piece in response.iter_bytes(PIECE):
                    f.write(piece)
            os.replace(tmp, dest)
        except self.transport_error as exc:
            raise BatchError(f"the download from {self.server} broke off: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class _Counted:
    """A file read by httpx's multipart encoder, counting bytes for the upload's progress line (a
    stream that cannot seek, :class:`ZipStream`, goes chunked: its ``seek``, ``tell`` and ``fileno``
    raise ``UnsupportedOperation``)."""

    def __init__(self, f: IO[bytes], total: int, progress: Progress) -> None:
        self.f, self.total, self.progress, self.sent = f, total, progress, 0
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sent += len(data)
        if (
            data or not self.ended
        ):  # the last line once, when the body ends (it was one a read past the total)
            self.ended = not data
            shown = min(self.sent, self.total)  # a streamed ZIP's headers are not counted in its total
            self.progress.line(f"uploading {_bar(shown / max(self.total, 1))} {_size(shown)}/"
                               f"{_size(self.total)}", final=not data)  # fmt: skip
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self.sent, self.ended = 0, False
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def fileno(self) -> int:
        return self.f.fileno()


# -- progress ------------------------------------------------------------------------------------------


def _bar(fraction: float, width: int = 24) -> str:
    done = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * done + "-" * (width - done) + f"] {100 * fraction:5.1f}%"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(view: dict[str, Any]) -> str:
    """One line of a batch's status: bar, jobs done, failures, audio left, ETA."""
    counts = view.get("counts") or {}
    jobs = int(view.get("jobs") or 0)
    finished = sum(int(counts.get(k, 0)) for k in FINAL_STATUSES)
    parts = [_bar(float(view.get("progress") or 0.0)), f"{finished}/{jobs} jobs"]
    if view.get("status") == "preparing":
        parts.append(f"the server is reading the recordings ({int(view.get('items') or 0)} so far)")
    if counts.get("processing"):
        parts.append(f"{counts['processing']} running")
    if counts.get("failed"):
        parts.append(f"{counts['failed']} failed")
    if view.get("audio_seconds_left") is not None:
        parts.append(f"{_duration(view['audio_seconds_left'])} of audio left")
    if view.get("eta_seconds") is not None:
        parts.append(f"ETA {_duration(view['eta_seconds'])}")
    return "  ".join(parts)


@dataclass
class Progress:
    """On a terminal one line redrawn in place; in a log one line every ``every`` seconds."""

    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    every: float = 10.0
    tty: bool | None = None
    _last: float = -1e9
    _drawn: bool = False

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = self.stream.isatty()

    def line(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if not (final or now - self._last >= 0.1):  # a redraw per upload piece would flood
                return
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        elif final or now - self._last >= self.every:
            self.stream.write(text + "\n")
        else:
            return
        self._last = now
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
        self._last = -1e9


# -- results --------------------------------------------------------------------------------------------


def _member_parts(name: str) -> tuple[str, ...] | None:
    """The path parts of a results entry, or None when it would land outside OUT or on our files."""
    norm = name.replace("\\", "/")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if norm.startswith("/") or not parts or ".." in parts or ":" in parts[0]:
        return None
    if parts[-1].startswith(TMP_PREFIX) or parts == (STATE_NAME,):
        return None
    return parts


def safe_extract(archive: Path, out: Path) -> list[str]:
    """Extract a results ZIP into ``out``; every entry is checked first and one that would escape
    ``out`` (absolute, ``..``, a link, through a linked directory) refuses the whole archive."""
    root = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        plan: list[tuple[zipfile.ZipInfo, Path, str]] = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = _member_parts(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if parts is None or kind not in (0, stat.S_IFREG):
                raise BatchError(
                    f"the results archive holds an unsafe entry {info.filename!r}: nothing extracted"
                )
            target = root.joinpath(*parts)
            if not target.parent.resolve().is_relative_to(root) and target.parent.exists():
                raise BatchError(f"the results entry {info.filename!r} leads outside OUT: nothing extracted")
            plan.append((info, target, "/".join(parts)))
        for info, target, _ in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(root):
                raise BatchError(f"the results entry {info.filename!r} leads outside OUT")
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f, zf.open(info) as src:
                    while piece := src.read(PIECE):
                        f.write(piece)
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return [name for _, _, name in plan]


def list_items(client: Client, batch_id: str) -> list[dict[str, Any]]:
    """Every item of the batch (name, job_id, status, error, duration), through the pages."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = client.get_json(f"/v1/batches/{batch_id}/items", **params)
        rows.extend(page.get("items", page.get("data", [])))
        cursor = page.get("next_cursor")
        if not cursor:
            return rows


def transcript_name(name: str, fmt: str) -> str:
    """calls/a.wav -> calls/a.srt: the name the server's ZIP gives a recording's transcript."""
    path = PurePosixPath(name)
    return str(path.with_suffix(f".{fmt}")) if path.suffix else f"{name}.{fmt}"


def fetch_results(
    client: Client, batch_id: str, out: Path, formats: list[str], items: list[dict[str, Any]]
) -> list[str]:
    """The ZIP (one file per recording and format) extracted into ``out`` and ``results.jsonl``;
    returns the formats the ZIP lacked and that were fetched one transcript at a time instead."""
    fd, tmp_name = tempfile.mkstemp(dir=out, prefix=TMP_PREFIX, suffix=".zip")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        client.download(f"/v1/batches/{batch_id}/results", tmp, format="zip", formats=",".join(formats))
        names = safe_extract(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    client.download(f"/v1/batches/{batch_id}/results", out / "results.jsonl", format="jsonl")
    completed = [i for i in items if i.get("status") == "completed"]
    fetched = []
    for fmt in formats:
        if not completed or any(n.endswith(f".{fmt}") for n in names):
            continue
        fetched.append(fmt)  # an older server: its ZIP has json only
        for item in completed:
            parts = _member_parts(transcript_name(item["name"], fmt))
            if parts is None:
                raise BatchError(f"the item name {item['name']!r} is unsafe as a path")
            target = out.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            body = client.send("GET", f"/v1/jobs/{item['job_id']}/transcript", params={"format": fmt})
            write_atomic(target, body.content)
    return fetched


# -- the command -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One invocation: what it was given and where it stands (for the Ctrl-C message)."""

    args: argparse.Namespace
    source: Path
    out: Path
    formats: list[str]
    options: dict[str, Any]
    client: Client
    progress: Progress
    phase: str = "starting"
    batch_id: str | None = None

    def resume_hint(self) -> str:
        again = f"tone-platform batch {self.args.source} --server {self.args.server} --out {self.args.out}"
        if self.phase == "uploading":
            return (
                f"interrupted during the upload. Run the same command again ({again}): the upload is "
                "sent again under the same Idempotency-Key, so the server gives back any batch it made"
            )
        where = {"polling": "while waiting for it", "downloading": "during the download"}.get(self.phase, "")
        if self.batch_id:
            return (
                f"interrupted {where} (batch {self.batch_id} keeps running on the server). Resume with the "
                f"same command: {again}"
            )
        return f"interrupted before anything was sent; run the same command again: {again}"


def _options(args: argparse.Namespace, source: Path) -> dict[str, Any]:
    name = args.name
    if name is None:
        name = source.name
        for suffix in ARCHIVE_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
    options: dict[str, Any] = {"channels": args.channels, "name": name}
    # the text options only when given, so that a state file written before they existed still resumes
    if not args.normalize:
        options["normalize"] = "false"
    for key in ("vocabulary", "redact"):
        if getattr(args, key):
            options[key] = getattr(args, key)
    return options


def _inputs(run: Run) -> list[tuple[str, Path]] | None:
    """The files to pack (None for an archive sent as it is); refuses what cannot be a batch."""
    if run.source.is_dir():
        files = scan_dir(run.source)
        if not any(rel != METADATA_CSV for rel, _ in files):
            raise BatchError(
                f"{run.args.source} holds no audio files (looked for {', '.join(sorted(AUDIO_SUFFIXES))}"
                " in it and its subdirectories; hidden files are skipped)"
            )
        return files
    if is_archive(run.source):
        return None
    if run.source.is_file():
        raise BatchError(
            f"{run.args.source} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
        )
    raise BatchError(f"{run.args.source} does not exist")


def _upload(
    run: Run, source: Path | list[tuple[str, Path]], filename: str, key: str, *, digest: str
) -> dict[str, Any]:
    """POST /v1/batches under ``key`` (the Idempotency-Key): an archive as it is, or a directory's
    files as a ZIP made while it uploads (:class:`ZipStream`, sent chunked: no temporary copy of
    the directory, and the server transcribes its first recordings before the last is sent); the
    answer's body. ``digest``: the inputs' hash when they were read, which a streamed ZIP's files
    must still have."""
    run.phase = "uploading"
    stream = None
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, Path):
                size = source.stat().st_size
                body: IO[bytes] = stack.enter_context(source.open("rb"))
                _say(f"uploading {_size(size)} to {run.client.server}")
            else:
                size = sum(path.stat().st_size for _, path in source)
                body = stream = ZipStream(source)  # type: ignore[assignment]
                _say(f"uploading {len(source)} files ({_size(size)}) as one ZIP to {run.client.server}")
            response = run.client.send(
                "POST",
                "/v1/batches",
                retry=False,
                headers={"Idempotency-Key": key},
                files={"file": (filename, _Counted(body, size, run.progress), "application/zip")},
                data={k: str(v) for k, v in run.options.items() if v is not None},
            )
    except OSError as exc:  # a file gone or unreadable since it was hashed: the server drops the upload
        run.progress.end()
        raise BatchError(
            f"{exc.filename or run.args.source} could not be read during the upload "
            f"({exc.strerror or exc}); nothing was made of it. Run the command again"
        ) from None
    run.progress.end()
    answer = dict(response.json())
    if stream is not None and stream.digest != digest:
        raise BatchError(
            f"{run.args.source} changed while it was being uploaded (batch {answer.get('id')} holds what "
            "was sent); run the command again with --new"
        )
    return answer


def _wait(run: Run) -> dict[str, Any]:
    run.phase = "polling"
    assert run.batch_id
    while True:
        view = run.client.get_json(f"/v1/batches/{run.batch_id}")
        counts = view.get("counts")
        if view.get("status") == "preparing":  # a large batch still being read: more jobs to come
            done = False
        elif isinstance(counts, dict):  # "cancelled" comes before the running jobs have stopped
            done = int(counts.get("queued", 0)) + int(counts.get("processing", 0)) == 0
        else:
            done = view.get("status") in ("completed", "cancelled", "failed")
        run.progress.line(describe(view), final=done)
        if done:
            run.progress.end()
            return dict(view)
        time.sleep(run.args.poll)


def _summary(run: Run, items: list[dict[str, Any]], skipped: list[dict[str, Any]], fetched: list[str]) -> int:
    assert run.batch_id
    by_status: dict[str, int] = {}
    for item in items:
        by_status[item.get("status", "?")] = by_status.get(item.get("status", "?"), 0) + 1
    bad = [i for i in items if i.get("status") != "completed"]
    lost = [s for s in skipped if not str(s.get("reason", "")).startswith(HARMLESS_SKIPS)]
    done = by_status.get("completed", 0)
    print(
        f"batch {run.batch_id}: {done} of {len(items) + len(lost)} recordings transcribed, "
        f"{by_status.get('failed', 0) + len(lost)} failed, {by_status.get('cancelled', 0)} cancelled; "
        f"results in {run.out} ({', '.join(run.formats)}, results.jsonl)"
    )
    for item in bad:
        err = item.get("error") or {}
        why = f"{err.get('code')}: {err.get('message')}" if err else "no reason given"
        print(f"  {item.get('status')}: {item.get('name')}: {why}")
    for s in lost:
        print(f"  not accepted: {s.get('name')}: {s.get('reason')}")
    if fetched:
        _say(
            f"warning: the server's results ZIP had no {', '.join(fetched)} files (an older server?); "
            f"fetched each transcript one by one instead"
        )
    return EXIT_FAILED if bad or lost else EXIT_OK


def _same_batch(state: dict[str, Any], run: Run, input_hash: str) -> str | None:
    """Why the state file's batch is not this run's (None when it is)."""
    if state.get("server") != run.client.server:
        return f"it was submitted to {state.get('server')}, not {run.client.server}"
    if state.get("input_hash") != input_hash:
        return "the recordings changed since"
    if state.get("options") != run.options:
        return f"its options were {state.get('options')}, now {run.options}"
    return None


def _new_state(run: Run, digest: str) -> dict[str, Any]:
    salt = uuid.uuid4().hex if run.args.new else ""  # --new: a batch of its own even for the same inputs
    return {
        "server": run.client.server,
        "batch_id": None,
        "input_hash": digest,
        "idempotency_key": idempotency_key(digest, run.options, salt),
        "options": run.options,
        "source": str(run.source.resolve()),
        "skipped": [],
    }


def _resume(run: Run, state: dict[str, Any], files: list[tuple[str, Path]] | None) -> None:
    """Check that the state file is about these inputs, and whether its batch is still there."""
    digest = dir_hash(files) if files is not None else _file_digest(run.source)
    why = _same_batch(state, run, digest)
    if why:
        raise BatchError(
            f"{run.out} belongs to batch {state.get('batch_id') or '(its upload did not finish)'}, but "
            f"{why}. Pass --new to submit these inputs as a new batch (or use another --out)"
        )
    run.batch_id = state.get("batch_id")
    if not run.batch_id:
        _say("the last upload did not finish: sending it again under the same Idempotency-Key")
        return
    try:
        run.client.get_json(f"/v1/batches/{run.batch_id}")
    except ServerError as exc:
        if exc.status != 404:
            raise
        _say(f"batch {run.batch_id} is no longer on the server: submitting the inputs again")
        run.batch_id = None  # under a new key: the old one would name the vanished batch
        state["idempotency_key"] = idempotency_key(digest, run.options, uuid.uuid4().hex)
        return
    _say(f"resuming batch {run.batch_id} (from {run.out / STATE_NAME}); nothing is uploaded again")


def _submit(run: Run, state: dict[str, Any] | None, files: list[tuple[str, Path]] | None) -> dict[str, Any]:
    """Hash the inputs, write the state with the Idempotency-Key, upload; the state with the batch."""
    if files is None:
        source: Path | list[tuple[str, Path]] = run.source
        filename, digest = run.source.name, _file_digest(run.source)
    else:
        _say(f"reading {len(files)} files of {run.args.source}")
        source, filename, digest = files, f"{run.options['name'] or 'batch'}.zip", dir_hash(files)
    if state is None:
        state = _new_state(run, digest)
        save_state(run.out, state)  # before the upload: a rerun after Ctrl-C reuses its key
    elif digest != state["input_hash"]:
        raise BatchError(f"{run.args.source} changed while it was being read; run the command again")
    answer = _upload(run, source, filename, state["idempotency_key"], digest=digest)
    if not answer.get("jobs") and answer.get("status") != "preparing":  # preparing: jobs to come
        (run.out / STATE_NAME).unlink(missing_ok=True)
        reasons = "; ".join(f"{s.get('name')}: {s.get('reason')}" for s in answer.get("skipped", [])[:10])
        raise BatchError(f"the server found no audio it could read in {run.args.source} ({reasons})")
    run.batch_id = str(answer["id"])
    state.update(batch_id=run.batch_id, skipped=answer.get("skipped", []))
    save_state(run.out, state)
    dupes = int(answer.get("items", 0)) - int(answer["jobs"])
    _say(
        f"batch {run.batch_id}: {answer.get('items')} recordings, {answer['jobs']} jobs"
        + (f" ({dupes} duplicates transcribed once)" if dupes > 0 else "")
        + (f", {len(answer['skipped'])} entries skipped" if answer.get("skipped") else "")
    )
    return state


def execute(run: Run) -> int:
    files = _inputs(run)
    run.client.send("GET", "/v1/jobs", params={"limit": 1}, retry=False)  # server and key, before work
    state = None if run.args.new else load_state(run.out)
    if state is not None:
        _resume(run, state, files)
    if not run.batch_id:
        state = _submit(run, state, files)
    assert state is not None and run.batch_id
    view = _wait(run)
    run.phase = "downloading"
    items = list_items(run.client, run.batch_id)
    fetched = fetch_results(run.client, run.batch_id, run.out, run.formats, items)
    run.phase = "done"
    skipped = view["skipped"] if isinstance(view.get("skipped"), list) else state.get("skipped") or []
    return _summary(run, items, skipped, fetched)


def default_server() -> str | None:
    """``TONE_SERVER_URL``, else the API of the ``tone-platform up`` stack of TONE_DATA_DIR (its up.json)."""
    if os.environ.get("TONE_SERVER_URL"):
        return os.environ["TONE_SERVER_URL"]
    from shared.localstack.supervisor import stack_api_url

    return stack_api_url()


def cmd_batch(args: argparse.Namespace) -> int:
    args.server = args.server or default_server()
    if not args.server:
        _say("no server: give --server URL, set TONE_SERVER_URL, or start one with `tone-platform up`")
        return EXIT_ERROR
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        _say(f"--format takes a comma-separated list of {', '.join(FORMATS)} (got {args.format!r})")
        return EXIT_ERROR
    if args.poll <= 0:
        _say("--poll must be a positive number of seconds")
        return EXIT_ERROR
    source = Path(args.source)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _say(f"cannot create {out}: {exc.strerror}")
        return EXIT_ERROR
    try:
        import httpx  # noqa: F401
    except ImportError:
        _say("needs httpx: install the platform extra (pip install 'tone-platform[platform]')")
        return EXIT_ERROR
    key = args.api_key or os.environ.get("TONE_API_KEY") or None
    client = Client(args.server, key)
    run = Run(args, source, out, formats, _options(args, source), client, Progress())
    try:
        return execute(run)
    except BatchError as exc:
        run.progress.end()
        _say(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        run.progress.end()
        _say(run.resume_hint())
        return EXIT_INTERRUPTED
    finally:
        client.close()


def register(sub: Any) -> None:
    """Adds ``batch`` to the ``tone-platform`` subcommands."""
    p = sub.add_parser(
        "batch",
        help="transcribe a directory or archive of recordings through a server, resumably",
        description="Upload a directory (packed as a ZIP) or a "
        f"{'/'.join(ARCHIVE_SUFFIXES)} archive as one batch, follow it, and write one transcript "
        "file per recording and format into OUT. Interrupted, the same command resumes the same "
        "batch (OUT/.tone-batch.json). Exit: 0 all transcribed, "
        "1 some failed, 2 usage or server error, 130 interrupted.",
    )
    p.add_argument("source", metavar="DIR|ARCHIVE")
    p.add_argument("--server", metavar="URL",
                   help="the API (default: TONE_SERVER_URL, else the `up` stack's URL)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="where the transcripts go (created)")
    p.add_argument("--format", default="json,txt", metavar="LIST",
                   help=f"comma-separated, of {', '.join(FORMATS)} (default json,txt)")  # fmt: skip
    p.add_argument("--api-key", metavar="KEY", help="the API key (default: env TONE_API_KEY)")
    p.add_argument("--name", help="the batch's name (default: the directory's or archive's name)")
    p.add_argument("--channels", choices=["split", "mix"], default="split",
                   help="split (default): each channel its own stream; mix: mono")  # fmt: skip
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="digits in the transcripts (default); --no-normalize: spoken words")  # fmt: skip
    p.add_argument("--vocabulary", metavar="LIST", help="words to boost, comma-separated (beam search)")
    p.add_argument("--redact", metavar="LIST", help="mask: card,phone,passport,inn,snils,email,profanity")
    p.add_argument("--poll", type=float, default=2.0, metavar="SECONDS", help="status poll interval")
    p.add_argument("--new", action="store_true",
                   help="submit a new batch even if OUT holds the state of another one")  # fmt: skip
    p.set_defaults(func=cmd_batch)
