"""A batch's results, streamed in SQL pages (never built in memory): JSONL (a line per recording),
CSV (a row per phrase) or a ZIP with ``<path>.<format>`` per recording and format, ``results.jsonl``
and ``errors.csv``. The CSV's text and the zip's txt/srt/vtt/tsv files are the written form
(``display``) unless ``text="raw"`` asks for the words as spoken; JSON (the jsonl records, the zip's
``.json`` files) carries both, each phrase's ``text`` and ``display``, as the job's transcript does."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import selectinload

from api.errors import ApiError
from api.services import jobs as svc
from api.services.batch_analytics import ANALYTICS_CSV, AnalyticsCsv
from shared.asr.formats import FORMATS
from shared.db.models import Job
from shared.db.session import sessionmaker_for
from shared.platform.settings import Settings
from shared.platform.statuses import OPEN_STATUSES
from shared.platform.zip_sink import PipeSink
from shared.text.display import phrase_text


def job_error(code: str | None, message: str | None) -> dict[str, str] | None:
    return {"code": code, "message": message or ""} if code else None


# -- results, streamed ------------------------------------------------------------------------------

PAGE = 50
ZIP_FORMATS = ("json", "txt", "srt", "vtt")  # the default of ?formats= for format=zip


def parse_formats(value: str | None) -> tuple[str, ...]:
    """``json,srt`` -> ("json", "srt"); 422 ``invalid_request`` for an unknown one."""
    if value is None or not value.strip():
        return ZIP_FORMATS
    wanted = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise ApiError(
            422, "invalid_request", f"unknown format {unknown[0]!r} in formats: use {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(wanted))


def _pages(settings: Settings, batch_id: uuid.UUID) -> Iterator[list[Job]]:
    """The batch's jobs by name, ``PAGE`` at a time (keyset pages), each with its transcript, in
    a session of the stream's own (the request's is closed while the body streams)."""
    session = sessionmaker_for(settings.database_url)()
    name = Job.options["batch_name"].as_string()
    last: tuple[str, uuid.UUID] | None = None
    try:
        while True:
            query = select(Job, name).where(Job.batch_id == batch_id).options(selectinload(Job.transcript))
            if last is not None:
                query = query.where(tuple_(name, Job.id) > tuple_(*last))
            rows = session.execute(query.order_by(name, Job.id).limit(PAGE)).all()
            if not rows:
                return
            yield [r[0] for r in rows]
            last = (rows[-1][1], rows[-1][0].id)
            session.expunge_all()
            if len(rows) < PAGE:
                return
    finally:
        session.close()


def _names(job: Job) -> list[str]:
    return list(job.options.get("batch_names") or [job.options.get("batch_name", "")])


def _result_records(settings: Settings, batch_id: uuid.UUID) -> Iterator[tuple[Job, dict[str, Any]]]:
    """One record per item name, with its job."""
    for page in _pages(settings, batch_id):
        for job in page:
            done = job.status == "completed" and job.transcript is not None
            phrases = svc.shown_phrases(job, job.transcript) if done and job.transcript else []
            for name in _names(job):
                yield (
                    job,
                    {
                        "name": name,
                        "job_id": str(job.id),
                        "status": job.status,
                        "error": job_error(job.error_code, job.error_message),
                        "metadata": job.client_metadata,
                        "duration": job.duration,
                        "phrases": phrases,
                    },
                )


@dataclass(frozen=True)
class ResultsRequest:
    """What a results stream needs, copied out of the request's session (closed while it streams)."""

    batch_id: uuid.UUID
    skipped: list[dict[str, Any]]
    formats: tuple[str, ...] = ZIP_FORMATS
    metadata_columns: tuple[str, ...] = ()  # analytics.csv's metadata columns (every key of the batch)
    text: str = "display"  # the CSV's text and the zip's txt/srt/vtt/tsv: "display" or "raw" (spoken)


def stream_jsonl(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    for _, rec in _result_records(settings, req.batch_id):
        yield (json.dumps(rec, ensure_ascii=False) + "\n").encode()


# CSVs start with a UTF-8 BOM: Excel (on a Russian Windows above all) reads them as UTF-8 then, not
# as the ANSI code page (mojibake); Python's csv and every other reader skip it ("utf-8-sig")
BOM = "\ufeff"


def stream_csv(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    buf = io.StringIO()
    buf.write(BOM)
    writer = csv.writer(buf)
    writer.writerow(["name", "job_id", "channel", "start", "end", "text"])
    for _, rec in _result_records(settings, req.batch_id):
        for p in rec["phrases"]:
            writer.writerow(
                [
                    rec["name"],
                    rec["job_id"],
                    p.get("channel", 0),
                    p["start_time"],
                    p["end_time"],
                    phrase_text(p, req.text),
                ]
            )
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue().encode()


def output_name(name: str, fmt: str, used: set[str]) -> str:
    """``calls/a.wav`` -> ``calls/a.srt``; ``calls/a.wav.srt`` when ``calls/a.mp3`` took that."""
    path = PurePosixPath(name)
    candidate = str(path.with_suffix(f".{fmt}")) if path.suffix else f"{name}.{fmt}"
    if candidate in used:
        candidate = f"{name}.{fmt}"
    n = 2
    base = candidate
    while candidate in used:
        candidate = f"{base[: -len(fmt) - 1]}~{n}.{fmt}"
        n += 1
    used.add(candidate)
    return candidate


def open_member(zf: zipfile.ZipFile, name: str) -> IO[bytes]:
    """A member written as a stream, of unknown size: ZIP64 allowed (else zipfile refuses past 2 GiB)."""
    return zf.open(name, "w", force_zip64=True)


ERRORS_CSV = "errors.csv"
RESULTS_JSONL = "results.jsonl"


def stream_zip(settings: Settings, req: ResultsRequest) -> Iterator[bytes]:
    """Per completed recording one file per format (as GET /v1/jobs/{id}/transcript renders it),
    named after its path; then ``results.jsonl`` (the jsonl results), ``errors.csv`` (every
    item without a transcript, with its reason, and the skipped entries) and ``analytics.csv`` (a
    row per completed recording: its metadata and every measure). Written as it is read."""
    sink = PipeSink()
    used = {ERRORS_CSV, RESULTS_JSONL, ANALYTICS_CSV}
    table = AnalyticsCsv(req.metadata_columns)
    errors = io.StringIO()
    errors.write(BOM)
    writer = csv.writer(errors)
    writer.writerow(["name", "job_id", "status", "code", "message"])
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[call-overload]
        for job, rec in _result_records(settings, req.batch_id):
            if rec["status"] != "completed" or job.transcript is None:
                error = rec["error"] or {}
                message = error.get("message") or (
                    "not finished yet" if rec["status"] in OPEN_STATUSES else ""
                )
                writer.writerow([rec["name"], rec["job_id"], rec["status"], error.get("code", ""), message])
                continue
            table.add(rec["name"], job)
            for fmt in req.formats:
                body, _ = svc.render_transcript(job, fmt, req.text)
                zf.writestr(output_name(rec["name"], fmt, used), body)
            yield sink.take()
        with open_member(zf, RESULTS_JSONL) as out:
            for piece in stream_jsonl(settings, req):
                out.write(piece)
                yield sink.take()
        for entry in req.skipped:
            writer.writerow([entry.get("name", ""), "", "skipped", entry.get("reason", ""), ""])
        zf.writestr(ERRORS_CSV, errors.getvalue())
        zf.writestr(ANALYTICS_CSV, table.body())
    yield sink.take()
