"""``tone-platform batch`` run as a subprocess against the real stack: a folder of recordings in,
transcript files out; reruns, Ctrl-C and resume, bad keys and bad inputs."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from api.services.archive_stream import LocalHeaders
from shared.cli.batch import (
    STATE_NAME,
    BatchError,
    Client,
    Progress,
    Run,
    ZipStream,
    _upload,
    describe,
    dir_hash,
    safe_extract,
    scan_dir,
)
from shared.dev.bench import batch_archive, batch_folder, batch_run, jobs_run
from tests.api.test_api import auth
from tests.api.test_batch_sources import tenant_batches
from tests.api.test_batches import stereo_wav
from tests.conftest import KIT_AUDIO, Proc, make_key, start_api, start_worker, wait_for

CLI = Path(sys.executable).parent / "tone-platform"
# `python -c SIGINT_DEFAULT PROGRAM ARGS...`: PROGRAM with SIGINT's default disposition
SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
QUEUE = "batch-cli"  # the interruption test's own queue: no worker until it starts one
FORMATS = ["json", "srt", "vtt", "txt"]
CALLS = {
    "calls/a.wav": (["привет мир"], ["да"]),
    "calls/b.wav": (["как дела"], ["хорошо"]),
    "other/c.wav": (["до свидания"], ["пока"]),
}
WAITING = {
    name.replace("calls/", "waiting/"): ([*left, "ещё"], right) for name, (left, right) in CALLS.items()
}


def make_folder(root: Path, calls: dict[str, tuple[list[str], list[str]]] = CALLS) -> Path:
    """Stereo recordings in subfolders, metadata.csv at the root, and things that must not be sent."""
    for name, (left, right) in calls.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        stereo_wav(root / name, left, right)
    (root / "metadata.csv").write_text("path,agent\ncalls/a.wav,ivan\ncalls/b.wav,olga\n")
    (root / "notes.txt").write_text("not a recording")
    (root / ".hidden.wav").write_bytes(b"hidden files are not sent")
    return root


def run_batch(
    source: Path, out: Path, url: str, key: str | None, *extra: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TONE_API_KEY"}
    if key is not None:
        env["TONE_API_KEY"] = key
    cmd = [str(CLI), "batch", str(source), "--server", url, "--out", str(out), "--poll", "0.3", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def count_jobs(url: str, key: str) -> int:
    """The tenant's jobs, through the public list (every page)."""
    total, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/v1/jobs", params=params, headers=auth(key), timeout=30).json()
        total += len(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


def state_of(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / STATE_NAME).read_text()))


def tree(out: Path) -> dict[str, bytes]:
    """Every file under OUT but the state file."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != STATE_NAME
    }


def items_of(url: str, key: str, batch_id: str) -> list[dict[str, Any]]:
    got = httpx.get(f"{url}/v1/batches/{batch_id}/items", params={"limit": 1000}, headers=auth(key))
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


def assert_transcript_files(url: str, key: str, out: Path, batch_id: str, names: list[str]) -> None:
    """OUT/<path without extension>.<format> holds exactly the job's transcript in that format."""
    items = {i["name"]: i for i in items_of(url, key, batch_id)}
    assert sorted(items) == sorted(names)
    for name, item in items.items():
        assert item["status"] == "completed", item
        stem = name.rsplit(".", 1)[0]
        for fmt in FORMATS:
            want = httpx.get(
                f"{url}/v1/jobs/{item['job_id']}/transcript", params={"format": fmt}, headers=auth(key)
            )
            assert want.status_code == 200, want.text
            got = (out / f"{stem}.{fmt}").read_bytes()
            if fmt == "json":
                assert json.loads(got)["phrases"] == want.json()["phrases"], name
            else:
                assert got.decode() == want.text, (name, fmt)


@pytest.fixture(scope="module")
def key(servers: dict[str, str]) -> str:
    """A tenant of these tests alone, so that its job count moves only with them."""
    return make_key(servers, "batch-cli")


def test_help_lists_batch_and_the_bench_batch_run() -> None:
    top = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, check=True).stdout
    assert "batch" in top
    own = subprocess.run([str(CLI), "batch", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--server", "--out", "--format", "--api-key", "--name", "--channels", "--poll", "--new"):
        assert option in own
    bench = subprocess.run([str(CLI), "bench", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--batch-run" in bench and "--batch-only" in bench


# -- units: packing and extracting ----------------------------------------------------------------------


def test_packing_keeps_relative_paths_skips_hidden_and_non_audio_and_is_repeatable(tmp_path: Path) -> None:
    """The ZIP a directory is sent as: made while it is read (in the small pieces httpx reads), the
    same bytes twice, every entry stored with its sizes after its data (what the server follows
    while it uploads), the files' hash computed on the way equal to the one made before it."""
    folder = make_folder(tmp_path / "in")
    (folder / ".git").mkdir()
    (folder / ".git" / "x.wav").write_bytes(b"in a hidden folder")
    files = scan_dir(folder)
    assert [rel for rel, _ in files] == ["calls/a.wav", "calls/b.wav", "metadata.csv", "other/c.wav"]
    streams = [ZipStream(files), ZipStream(files)]
    first, second = (b"".join(iter(lambda s=s: s.read(65536), b"")) for s in streams)  # type: ignore[misc]
    assert first == second  # the same upload, byte for byte
    assert streams[0].digest == streams[1].digest == dir_hash(files)
    assert streams[0].sent == sum(path.stat().st_size for _, path in files)
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert zf.namelist() == [rel for rel, _ in files]
        assert all(i.flag_bits & 0x8 and i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("calls/b.wav") == (folder / "calls/b.wav").read_bytes()
    headers = LocalHeaders()
    assert [e.name for e in headers.feed(first)] == [rel for rel, _ in files]  # the server follows it


@pytest.mark.parametrize("bad", ["../escaped.txt", "/abs/escaped.txt", "a/../../escaped.txt", STATE_NAME])
def test_results_entries_escaping_out_refuse_the_whole_archive(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "results.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("calls/a.srt", "1\n")
        zf.writestr(bad, "evil")
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(BatchError, match="nothing extracted"):
        safe_extract(archive, out)
    assert list(tmp_path.rglob("*escaped*")) == [] and list(out.iterdir()) == []


def test_results_entry_that_is_a_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "results.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.txt")
        info.external_attr = (0o120777) << 16  # a symbolic link to /etc/passwd
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "out").mkdir()
    with pytest.raises(BatchError):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "link.txt").exists()


def test_the_upload_line_ends_once_at_100_percent_in_a_log(tmp_path: Path) -> None:
    """A streamed ZIP's reads go past its total (the headers): one last line, at the body's end (the
    100 % line came once a read past the total: three times in a walkthrough)."""
    from shared.cli.batch import _Counted

    folder = make_folder(tmp_path / "in")
    files = scan_dir(folder)
    log = io.StringIO()
    body = _Counted(ZipStream(files), sum(p.stat().st_size for _, p in files), Progress(log, tty=False))  # type: ignore[arg-type]
    while body.read(65536):
        pass
    body.read(65536)  # httpx may read once more
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "100.0%" in lines[-1] and "100.0%" not in lines[0], lines


def test_progress_redraws_one_line_on_a_terminal_and_prints_lines_in_a_log() -> None:
    counts = {"completed": 1, "failed": 1, "processing": 2, "queued": 0}
    view = {"jobs": 4, "progress": 0.5, "audio_seconds_left": 90.0, "eta_seconds": 65.0, "counts": counts}
    line = describe(view)
    assert "2/4 jobs" in line and "1 failed" in line and "1m30s of audio left" in line and "ETA 1m05s" in line
    term = io.StringIO()
    bar = Progress(term, tty=True)
    bar.line("one")
    bar.line("two", final=True)
    bar.end()
    assert term.getvalue() == "\rone\x1b[K\rtwo\x1b[K\n"
    log = io.StringIO()
    bar = Progress(log, every=3600, tty=False)
    bar.line("one")
    bar.line("two")  # within the interval: not written
    bar.line("three", final=True)
    assert log.getvalue() == "one\nthree\n"


# -- against the stack ---------------------------------------------------------------------------------


def test_folder_becomes_transcript_files_and_a_rerun_submits_nothing(
    api: Proc, worker: Proc, key: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    done = run_batch(folder, out, api.url or "", key, "--format", ",".join(FORMATS))
    assert done.returncode == 0, done.stderr
    batch_id = state_of(out)["batch_id"]
    assert f"batch {batch_id}: 3 of 3 recordings transcribed, 0 failed" in done.stdout
    assert "one by one" not in done.stderr  # the server's ZIP had every format (server: formats=)
    assert_transcript_files(api.url or "", key, out, batch_id, list(CALLS))
    assert "привет мир" in (out / "calls/a.txt").read_text()
    records = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == sorted(CALLS)
    assert records["calls/b.wav"]["metadata"] == {"path": "calls/b.wav", "agent": "olga"}
    assert {p["channel"] for p in records["calls/b.wav"]["phrases"]} == {0, 1}
    assert not any(n.startswith(".tone-batch-") for n in os.listdir(out))  # no temporary files left

    jobs, before = count_jobs(api.url or "", key), tree(out)
    again = run_batch(folder, out, api.url or "", key, "--format", ",".join(FORMATS))
    assert again.returncode == 0, again.stderr
    assert f"resuming batch {batch_id}" in again.stderr
    assert state_of(out)["batch_id"] == batch_id
    assert count_jobs(api.url or "", key) == jobs
    assert tree(out) == before


def test_a_folder_is_sent_as_a_zip_made_while_it_uploads_which_the_server_reads_as_it_arrives(
    api: Proc, worker: Proc, servers: dict[str, str], tmp_path: Path
) -> None:
    """No temporary ZIP: the directory is zipped into the request, each entry's sizes after it; the
    server follows it while it uploads (a body over one 1 MiB piece). A tenant of its own."""
    key = make_key(servers, "batch-cli-stream")
    folder = make_folder(tmp_path / "in", {"calls/a.wav": (["привет мир"], ["да"])})
    long = np.zeros((140 * 8000, 2), dtype=np.int16)  # 4.5 MB of silence after it
    sf.write(folder / "calls/z.wav", long, 8000, subtype="PCM_16")
    out = tmp_path / "out"
    done = run_batch(folder, out, api.url or "", key, "--format", "json")
    assert done.returncode == 0, done.stderr
    batch_id = state_of(out)["batch_id"]
    assert f"batch {batch_id}: 2 of 2 recordings transcribed, 0 failed" in done.stdout
    assert "as one ZIP" in done.stderr
    assert f"batch {batch_id}: reading its archive while it uploads" in api.log.read_text()
    assert "привет мир" in (out / "calls/a.json").read_text()
    assert not any(n.startswith(".tone-batch-") for n in os.listdir(out))


def test_a_file_unreadable_during_the_streamed_upload_ends_it_with_a_clear_error_and_no_batch(
    api: Proc, servers: dict[str, str], tmp_path: Path
) -> None:
    """The third entry cannot be opened once the first two are sent (here a directory where the
    file was): exit 2's message names it, and the server, its body cut short, keeps no batch."""
    key = make_key(servers, "batch-cli-gone")
    first = tmp_path / "a.wav"
    sf.write(first, np.zeros((100 * 8000, 2), dtype=np.int16), 8000, subtype="PCM_16")  # 3.2 MB
    second = stereo_wav(tmp_path / "b.wav", ["привет мир"], ["да"])
    gone = tmp_path / "c.wav"
    gone.mkdir()
    args = argparse.Namespace(source=str(tmp_path))
    client = Client(api.url or "", key)
    run = Run(args, tmp_path, tmp_path / "out", ["json"], {"name": "gone"}, client, Progress())
    try:
        with pytest.raises(BatchError, match=r"c\.wav could not be read during the upload"):
            _upload(
                run,
                [("a.wav", first), ("b.wav", second), ("c.wav", gone)],
                "gone.zip",
                f"gone-{os.getpid()}",
                digest="(not compared: the upload fails first)",
            )
    finally:
        client.close()
    # the API notices the cut body and removes whatever it began reading early
    wait_for(
        lambda: tenant_batches(servers["DATABASE_URL"], key) == 0, "the cut upload's batch removed", api, 30
    )


@pytest.fixture(scope="module")
def reading_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    """An API that reads every archive of more than one recording in the background, one entry per
    transaction: its batches answer ``preparing`` with no job yet."""
    env = {**platform_env, "TONE_BATCH_INLINE_FILES": "1", "TONE_BATCH_INTAKE_CHUNK": "1"}
    proc = start_api(env, logs, "api-batch-cli-reading")
    yield proc
    proc.stop()


def test_a_batch_the_server_reads_in_the_background_is_waited_for_to_its_last_recording(
    reading_api: Proc, worker: Proc, servers: dict[str, str], tmp_path: Path
) -> None:
    """Its answer has no job yet (status preparing): neither "no audio" nor the end. A tenant of its
    own: the same folder under another test's key would be that test's batch again (the CLI's
    Idempotency-Key comes from the files)."""
    key = make_key(servers, "batch-cli-reading")
    folder = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    done = run_batch(folder, out, reading_api.url or "", key, "--format", "json")
    assert done.returncode == 0, done.stderr
    batch_id = state_of(out)["batch_id"]
    assert f"batch {batch_id}: its recordings are read" in reading_api.log.read_text()  # in the background
    assert f"batch {batch_id}: 3 of 3 recordings transcribed, 0 failed" in done.stdout
    records = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(CALLS)
    assert all((out / name).with_suffix(".json").is_file() for name in CALLS)


def test_lost_state_file_still_finds_the_batch_by_its_idempotency_key(
    api: Proc, worker: Proc, key: str, tmp_path: Path
) -> None:
    """The upload's Idempotency-Key comes from the content: sent again, the server gives back the
    first batch (server side: Idempotency-Key on POST /v1/batches)."""
    folder = make_folder(tmp_path / "in", {"x/one.wav": (["раз два"], ["три"])})
    out = tmp_path / "out"
    first = run_batch(folder, out, api.url or "", key)
    assert first.returncode == 0, first.stderr
    batch_id, jobs = state_of(out)["batch_id"], count_jobs(api.url or "", key)
    (out / STATE_NAME).unlink()
    second = run_batch(folder, out, api.url or "", key)
    assert second.returncode == 0, second.stderr
    assert state_of(out)["batch_id"] == batch_id
    assert count_jobs(api.url or "", key) == jobs

    # as if Ctrl-C came after the server made the batch but before its answer arrived
    state = state_of(out)
    (out / STATE_NAME).write_text(json.dumps({**state, "batch_id": None}))
    third = run_batch(folder, out, api.url or "", key)
    assert third.returncode == 0, third.stderr
    assert "the last upload did not finish" in third.stderr
    assert state_of(out)["batch_id"] == batch_id
    assert count_jobs(api.url or "", key) == jobs


def test_archive_is_sent_as_is_and_an_unreadable_recording_exits_1(
    api: Proc, worker: Proc, key: str, tmp_path: Path
) -> None:
    wav = stereo_wav(tmp_path / "b.wav", ["как дела"], ["хорошо"])
    archive = tmp_path / "calls.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(wav, "x/b.wav")
        bad = (KIT_AUDIO / "bad" / "noise_bytes.wav").read_bytes()
        info = tarfile.TarInfo("x/broken.wav")
        info.size = len(bad)
        tf.addfile(info, io.BytesIO(bad))
    out = tmp_path / "out"
    done = run_batch(archive, out, api.url or "", key, "--format", "txt")
    assert done.returncode == 1, done.stderr
    assert "x/broken.wav" in done.stdout and "1 failed" in done.stdout
    assert "хорошо" in (out / "x" / "b.txt").read_text()


def test_bad_key_exits_2_saying_the_key_was_refused(api: Proc, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in", {"a.wav": (["да"], ["нет"])})
    done = run_batch(folder, tmp_path / "out", api.url or "", "tone_notakey_000000000000")
    assert done.returncode == 2
    assert "refused the API key" in done.stderr and "TONE_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr
    nokey = run_batch(folder, tmp_path / "out", api.url or "", None)
    assert nokey.returncode == 2 and "--api-key" in nokey.stderr


def test_folder_without_audio_exits_2_naming_what_was_looked_for(api: Proc, key: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("no recordings here")
    (folder / "metadata.csv").write_text("path,agent\n")
    done = run_batch(folder, tmp_path / "out", api.url or "", key)
    assert done.returncode == 2
    assert "holds no audio files" in done.stderr and ".wav" in done.stderr
    missing = run_batch(tmp_path / "nowhere", tmp_path / "out", api.url or "", key)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.fixture
def parked(platform_env: dict[str, str], logs: Path) -> Iterator[tuple[Proc, dict[str, str]]]:
    """An API whose jobs go to a queue no worker consumes yet: batches wait."""
    env = {**platform_env, "TONE_WORKER_QUEUE": QUEUE}
    proc = start_api(env, logs, "api-batch-cli")
    yield proc, env
    proc.stop()


def test_ctrl_c_while_waiting_then_rerun_resumes_the_same_batch(
    parked: tuple[Proc, dict[str, str]], logs: Path, key: str, tmp_path: Path
) -> None:
    api, env = parked
    url = api.url or ""
    folder = make_folder(tmp_path / "in", WAITING)  # content of its own: not an earlier test's batch
    out = tmp_path / "out"
    err_log = tmp_path / "cli.err"
    # started as from a terminal, where Ctrl-C's SIGINT is not ignored: a process started in the
    # background of a non-interactive shell (CI's, or `make test &`) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler, in pytest nor in its children
    cmd = [sys.executable, "-c", SIGINT_DEFAULT, str(CLI), "batch", str(folder), "--server", url,
           "--out", str(out), "--poll", "0.3", "--format", ",".join(FORMATS)]  # fmt: skip
    with err_log.open("w") as err:
        cli = subprocess.Popen(
            cmd, env={**os.environ, "TONE_API_KEY": key}, stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            wait_for(lambda: "0/3 jobs" in err_log.read_text(), "the CLI polling the batch", timeout=90)
            cli.send_signal(signal.SIGINT)
            assert cli.wait(30) == 130
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    said = err_log.read_text()
    batch_id = state_of(out)["batch_id"]
    assert batch_id and f"batch {batch_id} keeps running" in said and "Resume with the same command" in said
    assert "Traceback" not in said
    view = httpx.get(f"{url}/v1/batches/{batch_id}", headers=auth(key)).json()
    assert view["counts"]["queued"] == 3, view  # nothing ran: no worker consumes the queue yet
    jobs = count_jobs(url, key)

    worker = start_worker(env, logs, "batch-cli-worker", queues=QUEUE)
    try:
        done = run_batch(folder, out, url, key, "--format", ",".join(FORMATS))
        assert done.returncode == 0, done.stderr
        assert f"resuming batch {batch_id}" in done.stderr and "uploading" not in done.stderr
        assert state_of(out)["batch_id"] == batch_id
        assert count_jobs(url, key) == jobs  # resumed: no job was created again
        assert_transcript_files(url, key, out, batch_id, list(WAITING))

        stereo_wav(folder / "waiting" / "d.wav", ["новый звонок"], ["ага"])
        changed = run_batch(folder, out, url, key)
        assert changed.returncode == 2
        assert "changed since" in changed.stderr and "--new" in changed.stderr
        assert count_jobs(url, key) == jobs
        fresh = run_batch(folder, out, url, key, "--new")
        assert fresh.returncode == 0, fresh.stderr
        assert state_of(out)["batch_id"] != batch_id
        assert "4 of 4 recordings transcribed" in fresh.stdout
    finally:
        worker.stop()


@pytest.mark.parametrize("name", ["bench.zip", "bench.piped.zip", "bench.tar.gz"])
def test_bench_batch_run_measures_one_whole_batch(
    api: Proc, worker: Proc, key: str, tmp_path: Path, name: str
) -> None:
    """The code path of the bench's batch run (``make bench``), tiny, on the tones model: its ZIP, the
    same written as to a pipe, and its tar.gz (``--batch-run-source archive,piped,tar.gz``)."""
    archive = tmp_path / name
    audio = batch_archive(archive, recordings=3, seconds=1.0, seed=7)
    if name.endswith("zip"):
        with zipfile.ZipFile(archive) as zf:  # sizes after each entry's data exactly when piped
            assert {bool(i.flag_bits & 0x8) for i in zf.infolist()} == {"piped" in name}
    run = batch_run(api.url or "", key, archive, audio, poll=0.2)
    assert run.recordings == 3 and run.completed == 3
    assert 0 < run.upload_s <= run.first_result_s <= run.wall_s and run.rate > 0


def test_bench_batch_run_waits_for_a_batch_read_in_the_background(
    reading_api: Proc, worker: Proc, key: str, tmp_path: Path
) -> None:
    archive = tmp_path / "bench.zip"
    audio = batch_archive(archive, recordings=3, seconds=1.0, seed=8)
    run = batch_run(reading_api.url or "", key, archive, audio, poll=0.2)
    assert run.recordings == 3 and run.completed == 3
    assert reading_api.log.read_text().count(": its recordings are read") >= 1


def test_bench_batch_run_from_a_server_folder(
    platform_env: dict[str, str], logs: Path, worker: Proc, key: str, tmp_path: Path
) -> None:
    """The bench's folder source: the same recordings written under a batch root, submitted as
    ``{"directory": "calls"}`` (nothing uploaded), every job completed."""
    root = tmp_path / "root"
    root.mkdir()
    audio = batch_folder(root, recordings=3, seconds=1.0, seed=8)
    assert sorted(p.name for p in (root / "calls").iterdir()) == ["rec0000.wav", "rec0001.wav", "rec0002.wav"]
    api = start_api({**platform_env, "TONE_BATCH_ROOT": str(root)}, logs, "api-bench-folder")
    try:
        run = batch_run(api.url or "", key, root / "calls", audio, poll=0.2, directory="calls")
    finally:
        api.stop()
    assert run.recordings == 3 and run.completed == 3
    assert run.archive_bytes == sum(p.stat().st_size for p in (root / "calls").iterdir())
    assert 0 < run.upload_s <= run.first_result_s <= run.wall_s and run.rate > 0


def test_bench_jobs_run_polls_as_retry_after_says(api: Proc, worker: Proc, key: str, tmp_path: Path) -> None:
    """The code path of the bench's per-job run: every job completes, the wall time ends at the last
    job's server-side end, and a job is asked again only when its Retry-After (1 s) says."""
    import soundfile as sf

    def recordings(seed: int) -> list[Path]:
        files = [tmp_path / f"rec{seed}-{i}.wav" for i in range(3)]  # all different: no dedupe
        for i, f in enumerate(files):
            sf.write(f, np.random.default_rng(seed + i).normal(0, 2000, 8000 * 4).astype(np.int16), 8000)
        return files

    started = time.perf_counter()
    run = jobs_run(api.url or "", key, recordings(0))
    took = time.perf_counter() - started
    assert len(run.post_ms) == 3 and 0 < run.wall_s <= took
    assert len(run.get_ms) <= 3 * (took / 1.0 + 2)  # at most one GET per job per second, plus the last
    fixed = jobs_run(api.url or "", key, recordings(10), poll=0.05)  # a fixed rate: Retry-After ignored
    assert len(fixed.post_ms) == 3 and len(fixed.get_ms) >= 3 and fixed.wall_s > 0


def test_batch_cancelled_on_the_server_ends_the_wait_with_exit_1(
    parked: tuple[Proc, dict[str, str]], key: str, tmp_path: Path
) -> None:
    api, _ = parked
    url = api.url or ""
    folder = make_folder(
        tmp_path / "in", {"gone/a.wav": (["отмена"], ["да"]), "gone/b.wav": (["нет"], ["ну"])}
    )
    out = tmp_path / "out"
    cmd = [str(CLI), "batch", str(folder), "--server", url, "--out", str(out), "--poll", "0.3"]
    cli = subprocess.Popen(
        cmd,
        env={**os.environ, "TONE_API_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (out / STATE_NAME).is_file() and bool(state_of(out)["batch_id"]), "the batch id")
        batch_id = state_of(out)["batch_id"]
        cancel = httpx.post(f"{url}/v1/batches/{batch_id}/cancel", headers=auth(key))
        assert cancel.status_code == 200, cancel.text
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 1, stderr
    assert f"batch {batch_id}: 0 of 2 recordings transcribed, 0 failed, 2 cancelled" in stdout
    assert "cancelled: gone/a.wav" in stdout and "cancelled: gone/b.wav" in stdout


def test_text_options_reach_the_batch_and_its_files(
    api: Proc, worker: Proc, key: str, tmp_path: Path
) -> None:
    folder = make_folder(
        tmp_path / "in", {"call.wav": (["оплата двадцать пять тысяч триста рублей"], ["да иди ты нахуй"])}
    )
    done = run_batch(folder, tmp_path / "out", api.url or "", key, "--format", "txt", "--redact", "profanity")
    assert done.returncode == 0, done.stderr
    assert (
        tmp_path / "out" / "call.txt"
    ).read_text() == "[agent] оплата 25 300 рублей\n[client] да иди ты [мат]\n"
    raw = run_batch(folder, tmp_path / "raw", api.url or "", key, "--format", "txt", "--no-normalize")
    assert raw.returncode == 0, raw.stderr
    text = (tmp_path / "raw" / "call.txt").read_text()
    assert text == "[agent] оплата двадцать пять тысяч триста рублей\n[client] да иди ты нахуй\n"
    bad = run_batch(folder, tmp_path / "bad", api.url or "", key, "--redact", "dna")
    assert bad.returncode == 2 and "invalid_redact" in bad.stderr, bad.stderr
