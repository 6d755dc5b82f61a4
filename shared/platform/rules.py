"""A tenant's rules over finished transcripts; a match flags the job (``job_flags``).

Kinds and their ``params``:

- ``phrase_contains`` ``{"words": [...], "channel": 0|1|null}``: a phrase on the channel (any when
  null) contains any of the words or quoted-free phrases (stemmed, as search matches them: «расторгнуть
  договор» matches «расторгнуть договора»);
- ``missing_in_first`` ``{"words": [...], "seconds": N, "channel": 0|1|null}``: none of them was said
  by the channel in a phrase starting within the first N seconds (a greeting script);
- ``silence_over`` ``{"seconds": S}``: the longest silence (no one speaking) lasts more than S;
- ``overtalk_share_over`` ``{"share": X}``: overtalk time over speech time is above X (0–1; stereo).

Word rules are evaluated in SQL over the job's just-written index rows, so they stem exactly as
search does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import JobFlag, Rule, TranscriptPhrase
from shared.errors import CodedError

MAX_WORDS = 50
# a match's webhook event; queued as "job.flagged:<rule id>" (the rule travels in the event type, so
# retries and the beat's re-sends of a delivery row keep it), sent with "type": "job.flagged"
FLAGGED_EVENT = "job.flagged"


def flagged_rule(event_type: str) -> uuid.UUID | None:
    """The rule of a queued ``job.flagged:<rule id>`` event type, or None for any other event."""
    kind, _, rule = event_type.partition(":")
    if kind != FLAGGED_EVENT or not rule:
        return None
    try:
        return uuid.UUID(rule)
    except ValueError:
        return None


class RuleError(CodedError):
    """Bad rule parameters; the message says which (HTTP 422 ``invalid_rule``)."""

    code = "invalid_rule"
    status = 422


def _words(params: Mapping[str, Any]) -> list[str]:
    words = params.get("words")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise RuleError("words must be a non-empty list of non-empty strings")
    if len(words) > MAX_WORDS:
        raise RuleError(f"at most {MAX_WORDS} words per rule")
    return [w.strip() for w in words]


def _channel(params: Mapping[str, Any]) -> int | None:
    channel = params.get("channel")
    if channel is not None and (isinstance(channel, bool) or channel not in (0, 1)):
        raise RuleError("channel must be 0 (agent), 1 (client) or null (any)")
    return channel


def _number(params: Mapping[str, Any], name: str, low: float, high: float | None = None) -> float:
    value = params.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise RuleError(f"{name} must be a number {bound}")
    return float(value)


def validate(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The rule's parameters, normalised; RuleError names what is wrong."""
    if kind == "phrase_contains":
        return {"words": _words(params), "channel": _channel(params)}
    if kind == "missing_in_first":
        return {
            "words": _words(params),
            "seconds": _number(params, "seconds", 0),
            "channel": _channel(params),
        }
    if kind == "silence_over":
        return {"seconds": _number(params, "seconds", 0)}
    if kind == "overtalk_share_over":
        return {"share": _number(params, "share", 0, 1)}
    raise RuleError(f"unknown kind {kind!r}: one of phrase_contains, missing_in_first, silence_over, "
                    "overtalk_share_over")  # fmt: skip


def _said(
    session: Session, job_id: uuid.UUID, params: Mapping[str, Any], before: float | None
) -> list[dict[str, Any]]:
    query: Any = None
    for word in params["words"]:
        one = func.phraseto_tsquery("russian", word)
        query = one if query is None else query.op("||")(one)
    stmt = select(
        TranscriptPhrase.idx, TranscriptPhrase.channel, TranscriptPhrase.start_time,
        TranscriptPhrase.end_time, TranscriptPhrase.text,
    ).where(TranscriptPhrase.job_id == job_id, TranscriptPhrase.tsv.op("@@")(query))  # fmt: skip
    if params.get("channel") is not None:
        stmt = stmt.where(TranscriptPhrase.channel == params["channel"])
    if before is not None:
        stmt = stmt.where(TranscriptPhrase.start_time < before)
    rows = session.execute(stmt.order_by(TranscriptPhrase.idx).limit(20)).all()
    return [
        {"idx": r.idx, "channel": r.channel, "start": r.start_time, "end": r.end_time, "text": r.text}
        for r in rows
    ]


def evaluate(
    session: Session, rule: Rule, job_id: uuid.UUID, measures: Mapping[str, Any]
) -> dict[str, Any] | None:
    """What matched (the flag's details), or None when the rule does not fire on this job."""
    p = rule.params or {}
    if rule.kind == "phrase_contains":
        hits = _said(session, job_id, p, None)
        return {"phrases": hits} if hits else None
    if rule.kind == "missing_in_first":
        hits = _said(session, job_id, p, float(p["seconds"]))
        return None if hits else {"seconds": p["seconds"], "words": p["words"]}
    if rule.kind == "silence_over":
        longest = float(measures.get("longest_silence") or 0.0)
        return {"longest_silence": longest} if longest > float(p["seconds"]) else None
    if rule.kind == "overtalk_share_over":
        overtalk, speech = measures.get("overtalk_time"), float(measures.get("speech_time") or 0.0)
        if overtalk is None or speech <= 0:
            return None
        share = round(float(overtalk) / speech, 4)
        return {"overtalk_share": share} if share > float(p["share"]) else None
    return None


def apply_rules(
    session: Session,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    measures: Mapping[str, Any],
    known: dict[uuid.UUID, list[Rule]] | None = None,
) -> list[str]:
    """Flag the job with every rule of its tenant that fires; returns their ids (new flags only).
    Word rules read the job's index rows, written just before in the same transaction. ``known``:
    the tenants' rules already read in this transaction (filled here; many jobs stored at once
    read them once)."""
    rules = None if known is None else known.get(tenant_id)
    if rules is None:
        query = select(Rule).where(Rule.tenant_id == tenant_id).order_by(Rule.created_at)
        rules = list(session.scalars(query))
        if known is not None:
            known[tenant_id] = rules
    fired: list[str] = []
    for rule in rules:
        details = evaluate(session, rule, job_id, measures)
        if details is None:
            continue
        stmt = (
            insert(JobFlag)
            .values(job_id=job_id, rule_id=rule.id, details=details)
            .on_conflict_do_nothing()
            .returning(JobFlag.rule_id)
        )
        if session.execute(stmt).first() is not None:
            fired.append(str(rule.id))
    return fired


def flag_filter(job_id_column: Any, rule_ids: Sequence[uuid.UUID]) -> Any:
    """A WHERE clause: the job carries any of these flags."""
    return or_(
        *[
            select(JobFlag.job_id).where(JobFlag.job_id == job_id_column, JobFlag.rule_id == r).exists()
            for r in rule_ids
        ]
    )


def _tsquery_sql(words: Sequence[str], params: dict[str, Any]) -> str:
    parts = []
    for n, word in enumerate(words):
        params[f"w{n}"] = word
        parts.append(f"phraseto_tsquery('russian', :w{n})")
    return "(" + " || ".join(parts) + ")"


def apply_to_existing(session: Session, rule: Rule) -> int:
    """Flag the tenant's already completed jobs that the rule matches, in bulk SQL (no ``job.flagged``
    events: those are sent for matches found as a transcript is stored). Returns the new flags."""
    from sqlalchemy import text

    from shared.platform.search import tenant_query

    p = rule.params or {}
    params: dict[str, Any] = {"rule": rule.id, "tenant": rule.tenant_id, "tq": tenant_query(rule.tenant_id)}
    jobs = (
        "SELECT j.id FROM jobs j"
        " WHERE j.tenant_id = :tenant AND j.status = 'completed' AND j.analytics IS NOT NULL"
    )
    if rule.kind in ("phrase_contains", "missing_in_first"):
        query = _tsquery_sql(p["words"], params)
        said = f"ph.tsv @@ ({query} && CAST(:tq AS tsquery))"
        if p.get("channel") is not None:
            said += " AND ph.channel = :channel"
            params["channel"] = p["channel"]
        if rule.kind == "phrase_contains":
            select_sql = (
                "SELECT ph.job_id, jsonb_build_object('phrases', jsonb_path_query_array("
                "jsonb_agg(jsonb_build_object('idx', ph.idx, 'channel', ph.channel, 'start', ph.start_time,"
                " 'end', ph.end_time, 'text', ph.text)"
                f" ORDER BY ph.idx), '$[0 to 19]')) FROM transcript_phrases ph WHERE {said}"
                f" AND ph.job_id IN ({jobs}) GROUP BY ph.job_id"
            )
        else:
            params["seconds"] = float(p["seconds"])
            select_sql = (
                "SELECT j.id,"
                " jsonb_build_object('seconds', CAST(:seconds AS float), 'words', CAST(:words AS jsonb))"
                f" FROM ({jobs}) j WHERE NOT EXISTS (SELECT 1 FROM transcript_phrases ph"
                f" WHERE ph.job_id = j.id AND ph.start_time < :seconds AND {said})"
            )
            params["words"] = json.dumps(p["words"], ensure_ascii=False)
    elif rule.kind == "silence_over":
        params["seconds"] = float(p["seconds"])
        select_sql = (
            "SELECT j.id, jsonb_build_object('longest_silence', (j.analytics->>'longest_silence')::float)"
            " FROM jobs j WHERE j.id IN ("
            + jobs
            + ") AND (j.analytics->>'longest_silence')::float > :seconds"
        )
    else:  # overtalk_share_over
        params["share"] = float(p["share"])
        share = (
            "round(((j.analytics->>'overtalk_time')::float"
            " / NULLIF((j.analytics->>'speech_time')::float, 0))::numeric, 4)::float"
        )
        select_sql = (
            f"SELECT j.id, jsonb_build_object('overtalk_share', {share}) FROM jobs j"
            f" WHERE j.id IN ({jobs}) AND {share} > :share"
        )
    inserted = session.execute(
        text(
            "INSERT INTO job_flags (job_id, rule_id, details, created_at)"
            f" SELECT m.job_id, :rule, m.details, now() FROM ({select_sql}) AS m(job_id, details)"
            " ON CONFLICT DO NOTHING RETURNING job_id"
        ),
        params,
    ).all()
    return len(inserted)
