"""The search index of stored transcripts, and what is computed when a transcript is stored.

Every phrase of a stored transcript becomes a ``transcript_phrases`` row whose generated ``tsv``
column is PostgreSQL's ``russian`` full-text vector (Snowball stemming: «договор» matches
«договора», «договором») plus one lexeme naming the tenant, under a GIN index. A search ANDs the
tenant's lexeme into its query (``tenant_query``), so the index scan itself yields only that
tenant's rows. Rows go with their job (``ON DELETE CASCADE``: deleting a job or retention removes
them).

``after_transcript_stored`` is the one place a stored transcript is indexed, measured
(``shared.platform.analytics``) and checked against the tenant's rules (``shared.platform.rules``);
the worker (``worker.store``) and kept live sessions (``api.services.live``) call it inside the
transaction that stores the transcript.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Uuid, column, insert, update, values
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from shared.db.models import Job, TranscriptPhrase
from shared.platform import analytics

# the text a phrase is searched by: its display text (readable transcripts) when it has one, else
# its words; SEARCH_TEXT_SQL is the same choice over a phrase's JSON (the migration's back-fill)
SEARCH_TEXT_SQL = "COALESCE(NULLIF({p}->>'display', ''), {p}->>'text', '')"


def phrase_search_text(phrase: Mapping[str, Any]) -> str:
    """The text a phrase is indexed and shown by: ``display`` when present and not empty, else ``text``."""
    display = phrase.get("display")
    if isinstance(display, str) and display:
        return display
    return str(phrase.get("text") or "")


def tenant_lexeme(tenant_id: uuid.UUID | str) -> str:
    """The lexeme every phrase of the tenant carries (as ``models.PHRASE_TSV`` builds it)."""
    return "@" + uuid.UUID(str(tenant_id)).hex


def tenant_query(tenant_id: uuid.UUID | str) -> str:
    """The tenant's lexeme as a ``tsquery`` literal, to AND into a search's query."""
    return f"'{tenant_lexeme(tenant_id)}'"


def index_rows(
    job_id: uuid.UUID, tenant_id: uuid.UUID, phrases: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    return [
        {
            "job_id": job_id,
            "idx": i,
            "tenant_id": tenant_id,
            "channel": int(p.get("channel") or 0),
            "start_time": float(p["start_time"]),
            "end_time": float(p["end_time"]),
            "text": phrase_search_text(p),
        }
        for i, p in enumerate(phrases)
    ]


@dataclass(frozen=True)
class Stored:
    """A transcript just stored (what :func:`after_transcripts_stored` needs of it)."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    phrases: Sequence[Mapping[str, Any]]
    duration: float
    channels: int


def after_transcript_stored(
    session: Session,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    phrases: Sequence[Mapping[str, Any]],
    duration: float,
    channels: int,
    rules: dict[uuid.UUID, Any] | None = None,
) -> list[str]:
    """Index the phrases, store the job's analytics and flag the rules it matches, in the caller's
    transaction. Returns the ids of the rules that matched (each gets a ``job.flagged`` event).
    ``rules``: the tenants' rules already read in this transaction (``apply_rules``'s ``known``)."""
    stored = Stored(job_id, tenant_id, phrases, duration, channels)
    return after_transcripts_stored(session, [stored], rules)[job_id]


def after_transcripts_stored(
    session: Session, stored: Sequence[Stored], rules: dict[uuid.UUID, Any] | None = None
) -> dict[uuid.UUID, list[str]]:
    """:func:`after_transcript_stored` for many transcripts stored in one transaction (a worker's
    round ends many recordings at once): one INSERT of every phrase's index row and one UPDATE of
    every job's analytics, whatever their number; then each tenant's rules. Returns the rules each
    job matched."""
    from shared.platform.rules import apply_rules

    if not stored:
        return {}
    rows = [row for t in stored for row in index_rows(t.job_id, t.tenant_id, t.phrases)]
    if rows:
        session.execute(insert(TranscriptPhrase), rows)
    measures = {t.job_id: analytics.compute(t.phrases, t.duration, t.channels) for t in stored}
    measured = values(column("id", Uuid()), column("measures", JSONB()), name="measured").data(
        list(measures.items())
    )
    session.execute(
        update(Job).where(Job.id == measured.c.id).values(analytics=measured.c.measures),
        execution_options={"synchronize_session": False},
    )
    known: dict[uuid.UUID, Any] = {} if rules is None else rules
    return {t.job_id: apply_rules(session, t.job_id, t.tenant_id, measures[t.job_id], known) for t in stored}
