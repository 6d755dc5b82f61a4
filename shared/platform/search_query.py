"""Full-text search over a tenant's transcripts (PostgreSQL, ``russian``): ``GET /v1/search``'s
queries, shared with the benchmark (``tone-platform bench --search-only``).

The query is ``websearch_to_tsquery('russian', q)``: words are stemmed and ANDed, "quoted phrases"
must appear in that order, ``-word`` excludes, ``or`` between words is an alternative. The tenant's
lexeme is ANDed into it (``shared.platform.search.tenant_query``), so the GIN index scan reads only
the caller's phrases. Hits are ranked with ``ts_rank`` and paged with a keyset cursor on (rank, job,
phrase); ``group=job`` pages jobs by their best hit, with their hit count and best hits.
Highlighting is ``ts_headline`` with private markers turned into ``<mark>`` around HTML-escaped
text, and into ``[start, end)`` character offsets of the plain text.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.db.models import METADATA_TENANT_KEY, tenant_metadata_sql
from shared.errors import CodedError
from shared.platform.search import tenant_query

OPEN, CLOSE = "\u27e6", "\u27e7"  # ts_headline's markers, replaced before anything is returned
HEADLINE_OPTIONS = f"StartSel={OPEN}, StopSel={CLOSE}, HighlightAll=true"
HITS_PER_JOB = 3
MAX_QUERY = 500
MAX_METADATA_FILTERS = 10


class SearchError(CodedError):
    """A search that cannot run as asked (HTTP 400 with its code)."""

    status = 400


@dataclass(frozen=True)
class SearchFilter:
    q: str
    channel: int | None = None
    batch_id: uuid.UUID | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    flags: tuple[uuid.UUID, ...] = ()
    group: str | None = None
    limit: int = 20
    cursor: str | None = None


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode(cursor: str, size: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != size:
            raise ValueError
        float(values[0])
        uuid.UUID(values[1])
        return values
    except (ValueError, TypeError, binascii.Error):
        raise SearchError(
            code="invalid_cursor", message="the cursor is not one this search returned"
        ) from None


def marks(headline: str) -> tuple[str, list[list[int]], str]:
    """(plain text, [[start, end), ...] offsets of the matched words, HTML with ``<mark>``)."""
    plain: list[str] = []
    spans: list[list[int]] = []
    out: list[str] = []
    start: int | None = None
    for ch in headline:
        if ch == OPEN and start is None:
            start = len(plain)
            out.append("<mark>")
        elif ch == CLOSE and start is not None:
            spans.append([start, len(plain)])
            out.append("</mark>")
            start = None
        elif ch not in (OPEN, CLOSE):
            plain.append(ch)
            out.append(html.escape(ch, quote=False))
    if start is not None:
        spans.append([start, len(plain)])
        out.append("</mark>")
    return "".join(plain), spans, "".join(out)


def _json_scalar(value: str) -> bool:
    """Whether ``value`` reads as a JSON number, true, false or null (not as a string)."""
    try:
        return not isinstance(json.loads(value), (str, list, dict))
    except ValueError:
        return False


def _matching(tenant_id: uuid.UUID, f: SearchFilter, params: dict[str, Any]) -> str:
    """The matching phrases as SQL CTEs (``m``: the phrase columns and ``rank``); fills ``params``.

    The index scan is a MATERIALIZED CTE of its own: the GIN index is read once, and the job
    filters apply to what it found. (Left to itself, with a selective metadata filter the planner
    loops over the jobs and repeats the index scan for each: seconds instead of milliseconds.)
    Without job filters, ``m`` is the phrases alone: the jobs are joined for the page only (the
    tenant's lexeme already confined the scan; the page's join checks the tenant again)."""
    params.update(q=f.q, tenant=tenant_id, tq=tenant_query(tenant_id))
    phrase = ["p.tsv @@ (websearch_to_tsquery('russian', :q) && CAST(:tq AS tsquery))"]
    if f.channel is not None:
        phrase.append("p.channel = :channel")
        params["channel"] = f.channel
    clauses = ["j.tenant_id = :tenant"]
    if f.batch_id is not None:
        clauses.append("j.batch_id = :batch_id")
        params["batch_id"] = f.batch_id
    if f.status is not None:
        clauses.append("j.status = :status")
        params["status"] = f.status
    if f.created_after is not None:
        clauses.append("j.created_at >= :created_after")
        params["created_after"] = f.created_after
    if f.created_before is not None:
        clauses.append("j.created_at < :created_before")
        params["created_before"] = f.created_before
    if f.min_duration is not None:
        clauses.append("j.duration >= :min_duration")
        params["min_duration"] = f.min_duration
    if f.max_duration is not None:
        clauses.append("j.duration <= :max_duration")
        params["max_duration"] = f.max_duration
    if f.metadata:
        # through the GIN index of the jobs' metadata with their tenant: {"~tenant": id, key: value}
        # (string values; a value that reads as a number, true, false or null is checked by the
        # text comparison below alone, which also matches a stored number)
        contains: dict[str, str] = {METADATA_TENANT_KEY: str(tenant_id)}
        for n, (key, value) in enumerate(sorted(f.metadata.items())):
            clauses.append(f"j.client_metadata ->> :mk{n} = :mv{n}")
            params[f"mk{n}"], params[f"mv{n}"] = key, value
            if key != METADATA_TENANT_KEY and not _json_scalar(value):
                contains[key] = value
        clauses.append(f"{tenant_metadata_sql('j')} @> CAST(:contains AS jsonb)")
        params["contains"] = json.dumps(contains, ensure_ascii=False)
    if f.flags:
        names = []
        for n, rule in enumerate(f.flags):
            params[f"flag{n}"] = rule
            names.append(f":flag{n}")
        listed = ", ".join(names)
        clauses.append(
            f"EXISTS (SELECT 1 FROM job_flags fl WHERE fl.job_id = j.id AND fl.rule_id IN ({listed}))"
        )
    found = f"""
        found AS MATERIALIZED (
            SELECT p.job_id, p.idx, p.channel, p.start_time, p.end_time, p.text,
                   ts_rank(p.tsv, websearch_to_tsquery('russian', :q))::float8 AS rank
            FROM transcript_phrases p WHERE {" AND ".join(phrase)}
        )"""
    if len(clauses) == 1:  # the tenant only
        return found + ", m AS (SELECT * FROM found)"
    return f"""{found}, m AS (
            SELECT found.* FROM found JOIN jobs j ON j.id = found.job_id
            WHERE {" AND ".join(clauses)}
        )"""


def check_query(db: Session, q: str) -> None:
    """400 for a query that finds nothing by itself: empty, only stop words, or only exclusions."""
    q = q.strip()
    if not q:
        raise SearchError(code="empty_query", message="q is empty: give words to search for")
    if len(q) > MAX_QUERY:
        raise SearchError(code="query_too_long", message=f"q may hold at most {MAX_QUERY} characters")
    row = db.execute(
        text("SELECT numnode(t) AS n, querytree(t) AS tree FROM websearch_to_tsquery('russian', :q) AS t"),
        {"q": q},
    ).one()
    if row.n == 0:
        raise SearchError(
            code="empty_query", message="q holds no searchable word (only stop words or punctuation)"
        )
    if row.tree == "T":
        raise SearchError(
            code="query_needs_a_word", message="q must hold a word to find, not only -exclusions"
        )


JOB_NAME = "COALESCE(j.options ->> 'batch_name', j.filename)"


def _hit(row: Any) -> dict[str, Any]:
    plain, spans, highlighted = marks(row.headline)
    return {
        "job_id": str(row.job_id),
        "name": row.name,
        "metadata": row.metadata,
        "phrase_index": row.idx,
        "channel": row.channel,
        "start": row.start_time,
        "end": row.end_time,
        "text": plain,
        "highlight": highlighted,
        "marks": spans,
        "rank": row.rank,
    }


def search(db: Session, tenant_id: uuid.UUID, f: SearchFilter) -> dict[str, Any]:
    check_query(db, f.q)
    f = SearchFilter(**{**f.__dict__, "q": f.q.strip()})
    return _grouped(db, tenant_id, f) if f.group == "job" else _hits(db, tenant_id, f)


def hits_query(tenant_id: uuid.UUID, f: SearchFilter) -> tuple[str, dict[str, Any]]:
    """The SQL of one page of hits and its parameters (the benchmark EXPLAINs this very query)."""
    params: dict[str, Any] = {"limit": f.limit + 1, "opts": HEADLINE_OPTIONS}
    matching = _matching(tenant_id, f, params)
    after = ""
    if f.cursor:
        rank, job, idx = _decode(f.cursor, 3)
        params.update(c_rank=float(rank), c_job=uuid.UUID(job), c_idx=int(idx))
        after = "WHERE (rank < :c_rank OR (rank = :c_rank AND (job_id, idx) > (:c_job, :c_idx)))"
    sql = f"""
        WITH {matching}, page AS (
            SELECT * FROM m {after} ORDER BY rank DESC, job_id, idx LIMIT :limit
        )
        SELECT page.*, {JOB_NAME} AS name, j.client_metadata AS metadata,
               ts_headline('russian', page.text, websearch_to_tsquery('russian', :q), :opts) AS headline
        FROM page JOIN jobs j ON j.id = page.job_id AND j.tenant_id = :tenant
        ORDER BY rank DESC, job_id, idx
    """  # every value is a bound parameter; the clauses are fixed strings
    return sql, params


def _hits(db: Session, tenant_id: uuid.UUID, f: SearchFilter) -> dict[str, Any]:
    sql, params = hits_query(tenant_id, f)
    rows = db.execute(text(sql), params).all()
    page = rows[: f.limit]
    cursor = _encode([page[-1].rank, str(page[-1].job_id), page[-1].idx]) if len(rows) > f.limit else None
    return {"data": [_hit(r) for r in page], "next_cursor": cursor}


def _grouped(db: Session, tenant_id: uuid.UUID, f: SearchFilter) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": f.limit + 1, "opts": HEADLINE_OPTIONS, "per_job": HITS_PER_JOB}
    matching = _matching(tenant_id, f, params)
    after = ""
    if f.cursor:
        best, job = _decode(f.cursor, 2)
        params.update(c_best=float(best), c_job=uuid.UUID(job))
        after = "HAVING (max(rank) < :c_best OR (max(rank) = :c_best AND job_id > :c_job))"
    sql = f"""
        WITH {matching}, jobs_page AS (
            SELECT job_id, count(*) AS hits, max(rank) AS best FROM m
            GROUP BY job_id {after} ORDER BY best DESC, job_id LIMIT :limit
        ), top AS (
            SELECT m.*, row_number() OVER (PARTITION BY m.job_id ORDER BY m.rank DESC, m.idx) AS n
            FROM m JOIN jobs_page USING (job_id)
        )
        SELECT g.job_id, g.hits, g.best, {JOB_NAME} AS name, j.client_metadata AS metadata,
               t.idx, t.channel, t.start_time, t.end_time, t.rank,
               ts_headline('russian', t.text, websearch_to_tsquery('russian', :q), :opts) AS headline
        FROM jobs_page g JOIN top t ON t.job_id = g.job_id AND t.n <= :per_job
        JOIN jobs j ON j.id = g.job_id AND j.tenant_id = :tenant
        ORDER BY g.best DESC, g.job_id, t.rank DESC, t.idx
    """
    rows = db.execute(text(sql), params).all()
    groups: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        group = groups.get(r.job_id)
        if group is None:
            group = groups[r.job_id] = {
                "job_id": str(r.job_id), "name": r.name, "metadata": r.metadata, "count": r.hits,
                "rank": r.best, "hits": [],
            }  # fmt: skip
        group["hits"].append(_hit(r))
    ordered = list(groups.values())
    page = ordered[: f.limit]
    cursor = _encode([page[-1]["rank"], page[-1]["job_id"]]) if len(ordered) > f.limit else None
    return {"data": page, "next_cursor": cursor}
