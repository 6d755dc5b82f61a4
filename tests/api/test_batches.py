"""Batches (``/v1/batches``) against the real stack: an archive in, one job per distinct recording."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from api.errors import ApiError
from api.services.batch_sources import check_entries, open_archive
from shared.asr.engine import Recognizer
from shared.db.models import Job
from shared.db.session import session_scope
from shared.dev.models.tones import synthesize
from shared.platform.settings import Settings
from tests.api.test_api import assert_error, auth
from tests.conftest import written

CALLS = {"calls/a.wav": (["привет мир"], ["да"]), "calls/b.wav": (["как дела"], ["хорошо"])}


def stereo_wav(path: Path, left: list[str], right: list[str]) -> Path:
    a, _ = synthesize(left)
    b, _ = synthesize(right)
    n = max(len(a), len(b))
    audio = np.zeros((n, 2), dtype=np.int16)
    audio[: len(a), 0] = a
    audio[: len(b), 1] = b
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch-audio")
    return {name: stereo_wav(root / Path(name).name, *ph) for name, ph in CALLS.items()}


def archive_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def post_batch(url: str, key: str, data: bytes, name: str = "calls.zip", **fields: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/batches", headers=auth(key), files={"file": (name, data)}, data=fields, timeout=60
    )


def wait_batch_done(url: str, key: str, batch_id: str, timeout: float = 120) -> dict:
    """The batch's view once all its jobs ended (status completed), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (view := httpx.get(f"{url}/v1/batches/{batch_id}", headers=auth(key)).json())[
        "status"
    ] != "completed":
        assert time.monotonic() < deadline, view
        time.sleep(0.3)
    return view


def batch_job_count(servers: dict[str, str]) -> int:
    with session_scope(servers["DATABASE_URL"]) as s:
        return int(s.scalar(select(func.count()).select_from(Job).where(Job.batch_id.isnot(None))))


def test_batch_end_to_end(api, worker, api_key, other_key, wavs, tone_model, servers) -> None:
    members = {name: path.read_bytes() for name, path in wavs.items()}
    members["calls/copy-of-a.wav"] = members["calls/a.wav"]
    members["notes.txt"] = b"not audio"
    members["metadata.csv"] = b"path,agent\ncalls/a.wav,ivan\ncalls/b.wav,olga\n"
    got = post_batch(api.url, api_key, archive_bytes(members))
    assert got.status_code == 202, got.text
    body = got.json()
    assert body["items"] == 3 and body["jobs"] == 2 and body["source"] == "archive"
    assert body["skipped"] == [{"name": "notes.txt", "reason": body["skipped"][0]["reason"]}]
    batch = body["id"]

    assert httpx.get(f"{api.url}/v1/batches/{batch}", headers=auth(other_key)).status_code == 404
    deadline = time.monotonic() + 120
    while True:
        view = httpx.get(f"{api.url}/v1/batches/{batch}", headers=auth(api_key)).json()
        if view["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert view["counts"]["completed"] == 2 and view["progress"] == 1.0, view
    assert view["audio_seconds_left"] == 0 and view["audio_seconds_done"] > 0

    items = httpx.get(f"{api.url}/v1/batches/{batch}/items?limit=2", headers=auth(api_key)).json()
    assert [i["name"] for i in items["items"]] == ["calls/a.wav", "calls/b.wav"] and items["next_cursor"]
    rest = httpx.get(
        f"{api.url}/v1/batches/{batch}/items", params={"cursor": items["next_cursor"]}, headers=auth(api_key)
    ).json()
    assert [i["name"] for i in rest["items"]] == ["calls/copy-of-a.wav"] and rest["next_cursor"] is None

    rec = Recognizer.load(tone_model, threads=1)
    expected = {
        n: written(rec.transcribe_file(p, channels="split").to_dict()["phrases"]) for n, p in wavs.items()
    }
    expected["calls/copy-of-a.wav"] = expected["calls/a.wav"]
    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=jsonl", headers=auth(api_key))
    lines = [json.loads(line) for line in res.text.splitlines()]
    assert sorted(r["name"] for r in lines) == sorted(expected)
    by_name = {r["name"]: r for r in lines}
    assert by_name["calls/a.wav"]["job_id"] == by_name["calls/copy-of-a.wav"]["job_id"]
    for name, want in expected.items():
        assert by_name[name]["phrases"] == want, name
        assert by_name[name]["status"] == "completed"
    assert by_name["calls/b.wav"]["metadata"] == {"path": "calls/b.wav", "agent": "olga"}
    assert {p["channel"] for p in by_name["calls/b.wav"]["phrases"]} == {0, 1}

    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=csv", headers=auth(api_key))
    assert res.content.startswith("\ufeff".encode())  # a UTF-8 BOM: Excel reads it as UTF-8
    rows = list(csv.DictReader(io.StringIO(res.content.decode("utf-8-sig"))))
    assert len(rows) == sum(len(v) for v in expected.values())
    assert {r["text"] for r in rows if r["name"] == "calls/b.wav"} == {
        p["text"] for p in expected["calls/b.wav"]
    }

    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=zip", headers=auth(api_key))
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        stems = [n.removesuffix(".wav") for n in expected]
        files = [f"{s}.{fmt}" for s in stems for fmt in ("json", "txt", "srt", "vtt")]
        assert sorted(zf.namelist()) == sorted([*files, "results.jsonl", "errors.csv", "analytics.csv"])
        assert json.loads(zf.read("calls/b.json"))["phrases"] == expected["calls/b.wav"]
        assert [json.loads(line) for line in zf.read("results.jsonl").decode().splitlines()] == lines
        assert zf.read("errors.csv").startswith("\ufeff".encode())
        errors = list(csv.DictReader(io.StringIO(zf.read("errors.csv").decode("utf-8-sig"))))
        assert [(e["name"], e["status"]) for e in errors] == [("notes.txt", "skipped")]

    assert httpx.post(f"{api.url}/v1/batches/{batch}/cancel", headers=auth(api_key)).json()["cancelled"] == 0
    assert httpx.get(f"{api.url}/v1/batches/{batch}/results", headers=auth(other_key)).status_code == 404


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_hostile_archives_are_refused(api, api_key, servers, wavs) -> None:
    wav = wavs["calls/a.wav"].read_bytes()
    before = batch_job_count(servers)
    cases: list[tuple[bytes, int, str]] = [
        (archive_bytes({"ok.wav": wav, "../evil.wav": wav}), 400, "unsafe_path"),
        (archive_bytes({"ok.wav": wav, "/etc/evil.wav": wav}), 400, "unsafe_path"),
        (_tar({"ok.wav": wav, "a/../../evil.wav": wav}), 400, "unsafe_path"),
        (archive_bytes({"ok.wav": wav, "zeros.wav": bytes(50_000_000)}), 400, "archive_bomb"),
        (b"this is not an archive at all", 415, "unsupported_archive"),
    ]
    for data, status, code in cases:
        assert_error(post_batch(api.url, api_key, data), status, code)
    assert batch_job_count(servers) == before


def test_limits_checked_before_extraction(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    path.write_bytes(archive_bytes({f"{i}.wav": b"x" for i in range(5)}))
    settings = Settings(batch_max_entries=3)
    handle, entries = open_archive(path, settings)
    handle.close()
    with pytest.raises(ApiError) as err:
        check_entries(entries, path.stat().st_size, settings)
    assert getattr(err.value, "code", None) == "too_many_entries"
    with pytest.raises(ApiError) as err:
        check_entries(entries, path.stat().st_size, Settings(batch_max_total_bytes=2))
    assert getattr(err.value, "code", None) == "archive_too_large"


def test_tar_gz_batch(api, worker, api_key, wavs) -> None:
    data = _tar({"x/b.wav": wavs["calls/b.wav"].read_bytes()})
    got = post_batch(api.url, api_key, data, name="calls.tar.gz")
    assert got.status_code == 202, got.text
    assert got.json()["items"] == 1


def _call(left: list[str], right: list[str]) -> np.ndarray:
    a, _ = synthesize(left)
    b, _ = synthesize(right)
    audio = np.zeros((max(len(a), len(b)), 2), dtype=np.int16)
    audio[: len(a), 0] = a
    audio[: len(b), 1] = b
    return audio


def test_a_call_center_archive_of_telephony_formats_matches_the_engine_per_channel(
    api, worker, api_key, tone_model, tmp_path: Path
) -> None:
    """A day's archive as a contact center exports it: stereo µ-law and A-law WAV, mono GSM 6.10 WAV,
    stereo MP3, in dated folders, with a metadata.csv; every recording and channel must come out as
    the engine's own offline split transcript of the same file."""
    calls = {
        "2026-11-23/0001_ulaw.wav": (["привет мир"], ["да"], "WAV", "ULAW"),
        "2026-11-23/0002_alaw.wav": (["как дела"], ["хорошо"], "WAV", "ALAW"),
        "2026-11-24/0003_gsm.wav": (["до свидания"], [], "WAV", "GSM610"),
        "2026-11-24/0004.mp3": (["привет"], ["как дела"], "MP3", "MPEG_LAYER_III"),
    }
    files = {}
    for name, (left, right, fmt, subtype) in calls.items():
        audio = _call(left, right) if right else synthesize(left)[0]
        path = tmp_path / name.replace("/", "_")
        sf.write(path, audio, 8000, format=fmt, subtype=subtype)
        files[name] = path
    members = {name: path.read_bytes() for name, path in files.items()}
    members["metadata.csv"] = "".join(
        ["recording,operator\n"] + [f"{n},op-{i}\n" for i, n in enumerate(calls)]
    ).encode()
    got = post_batch(api.url, api_key, archive_bytes(members), name="day.zip")
    assert got.status_code == 202, got.text
    batch = got.json()["id"]
    deadline = time.monotonic() + 180
    while (view := httpx.get(f"{api.url}/v1/batches/{batch}", headers=auth(api_key)).json())["status"] != (
        "completed"
    ) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert view["counts"]["completed"] == len(calls), view

    rec = Recognizer.load(tone_model, threads=1)
    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=jsonl", headers=auth(api_key))
    by_name = {r["name"]: r for r in map(json.loads, res.text.splitlines())}
    assert sorted(by_name) == sorted(calls)
    for i, (name, path) in enumerate(files.items()):
        want = written(rec.transcribe_file(path, channels="split").to_dict()["phrases"])
        assert want, f"{name}: the engine heard nothing, the comparison would prove nothing"
        assert by_name[name]["phrases"] == want, name
        assert by_name[name]["metadata"]["operator"] == f"op-{i}"
    items = f"{api.url}/v1/batches/{batch}/items"
    done = httpx.get(items, params={"status": "completed"}, headers=auth(api_key)).json()["items"]
    assert sorted(i["name"] for i in done) == sorted(calls)
    assert httpx.get(items, params={"status": "failed"}, headers=auth(api_key)).json()["items"] == []
    assert_error(httpx.get(items, params={"status": "lost"}, headers=auth(api_key)), 422, "invalid_request")
    # the G.711 calls are lossless enough for the tones model: the words themselves come through
    texts = {p["channel"]: p["text"] for p in by_name["2026-11-23/0001_ulaw.wav"]["phrases"]}
    assert texts == {0: "привет мир", 1: "да"}


def _windows_zip(members: dict[str, bytes]) -> bytes:
    """A ZIP as Russian Windows' "Send to > Compressed folder" writes it: names in CP866, no UTF-8
    flag. (Python's zipfile always writes UTF-8 names, so ASCII stand-ins of the same length are
    written and their bytes replaced, in the local headers and the central directory alike.)"""
    data = archive_bytes({f"{i:0{len(n.encode('cp866'))}d}": b for i, (n, b) in enumerate(members.items())})
    for i, name in enumerate(members):
        raw = name.encode("cp866")
        data = data.replace(f"{i:0{len(raw)}d}".encode(), raw)
    return data


def test_a_russian_windows_zip_and_an_excel_csv_keep_their_cyrillic_names(api, worker, api_key, wavs) -> None:
    name = "звонки/Иванов_0001.wav"
    csv_1251 = f"файл;оператор;очередь\n{name};Петров;входящие\n".encode("cp1251")  # Excel, Russian locale
    data = _windows_zip({name: wavs["calls/a.wav"].read_bytes(), "metadata.csv": csv_1251})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert not any(i.flag_bits & 0x800 for i in zf.infolist())  # really without the UTF-8 flag
        assert name not in zf.namelist()  # and Python alone reads the names wrong
    got = post_batch(api.url, api_key, data, name="выгрузка.zip")
    assert got.status_code == 202, got.text
    batch = got.json()["id"]
    wait_batch_done(api.url, api_key, batch)
    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=jsonl", headers=auth(api_key))
    (record,) = [json.loads(line) for line in res.text.splitlines()]
    assert record["name"] == name
    assert record["metadata"] == {"файл": name, "оператор": "Петров", "очередь": "входящие"}
    res = httpx.get(f"{api.url}/v1/batches/{batch}/results?format=zip&formats=txt", headers=auth(api_key))
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        assert "звонки/Иванов_0001.txt" in zf.namelist()


def test_deleting_a_batch_removes_its_jobs_transcripts_and_stored_audio(
    api, worker, api_key, other_key, wavs, servers
) -> None:
    got = post_batch(api.url, api_key, archive_bytes({n: p.read_bytes() for n, p in wavs.items()}))
    assert got.status_code == 202, got.text
    batch = got.json()["id"]
    wait_batch_done(api.url, api_key, batch)
    items = httpx.get(f"{api.url}/v1/batches/{batch}/items", headers=auth(api_key)).json()["items"]
    with session_scope(servers["DATABASE_URL"]) as s:
        paths = [Path(p) for p in s.scalars(select(Job.audio_path).where(Job.batch_id == uuid.UUID(batch)))]
    assert len(paths) == 2 and all(p.is_file() for p in paths)

    assert httpx.delete(f"{api.url}/v1/batches/{batch}", headers=auth(other_key)).status_code == 404
    assert httpx.delete(f"{api.url}/v1/batches/{batch}", headers=auth(api_key)).status_code == 204
    assert httpx.get(f"{api.url}/v1/batches/{batch}", headers=auth(api_key)).status_code == 404
    for item in items:
        assert httpx.get(f"{api.url}/v1/jobs/{item['job_id']}", headers=auth(api_key)).status_code == 404
    assert not any(p.exists() for p in paths)
    assert httpx.delete(f"{api.url}/v1/batches/{batch}", headers=auth(api_key)).status_code == 404


NUMBERS = ["номер договора двадцать три сорок пять", "оплата двадцать пять тысяч триста рублей"]


def test_results_show_the_written_form_unless_text_raw(api, worker, api_key, tmp_path: Path) -> None:
    """csv and the zip's text files: ``display`` by default, the spoken words with ``?text=raw``, as
    /v1/jobs/{id}/transcript; a bad value is 422 as there."""
    path = tmp_path / "numbers.wav"
    sf.write(path, synthesize(NUMBERS)[0], 8000, subtype="PCM_16")
    got = post_batch(api.url, api_key, archive_bytes({"calls/n.wav": path.read_bytes()}))
    assert got.status_code == 202, got.text
    batch = got.json()["id"]
    wait_batch_done(api.url, api_key, batch)
    url = f"{api.url}/v1/batches/{batch}/results"

    def get(**params: str) -> httpx.Response:
        r = httpx.get(url, params=params, headers=auth(api_key), timeout=60)
        assert r.status_code == 200, r.text
        return r

    def csv_texts(r: httpx.Response) -> list[str]:
        return [row["text"] for row in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))]

    def zip_files(r: httpx.Response) -> dict[str, str]:
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            return {n: zf.read(n).decode() for n in zf.namelist() if n.startswith("calls/")}

    written_form = ["номер договора 2345", "оплата 25 300 рублей"]
    assert csv_texts(get(format="csv")) == csv_texts(get(format="csv", text="display")) == written_form
    assert csv_texts(get(format="csv", text="raw")) == NUMBERS
    shown = zip_files(get(format="zip", formats="txt,srt,json"))
    spoken = zip_files(get(format="zip", formats="txt,srt,json", text="raw"))
    assert shown["calls/n.txt"] == "\n".join(written_form) + "\n"
    assert spoken["calls/n.txt"] == "\n".join(NUMBERS) + "\n"
    assert "25 300" in shown["calls/n.srt"] and "двадцать" not in shown["calls/n.srt"]
    assert "двадцать пять тысяч" in spoken["calls/n.srt"] and "25 300" not in spoken["calls/n.srt"]
    assert shown["calls/n.json"] == spoken["calls/n.json"]  # JSON carries both forms either way
    for fmt in ("jsonl", "csv", "zip"):
        assert_error(
            httpx.get(url, params={"format": fmt, "text": "fancy"}, headers=auth(api_key)),
            422,
            "invalid_request",
        )
