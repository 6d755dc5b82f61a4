"""Tenants, API keys, batches, jobs, transcripts, webhook deliveries and tenants' vocabularies
(SQLAlchemy 2, typed).

Alembic's migrations are generated from these models and a test checks that they never drift.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.platform.statuses import BATCH_STATUSES, FINAL_STATUSES, JOB_STATUSES

# A job's metadata with its tenant as one more key, for the GIN index search's metadata filters use
# (``@>`` of {"~tenant": id, key: value}): the tenant is in the index condition, so a filter never
# reads another tenant's job rows. Written once here, for the index and for the search query.
METADATA_TENANT_KEY = "~tenant"


# a stored recording's file name (its folder may be written otherwise by another process's settings):
# beat's sweep of recordings no job names (worker.retention.sweep_strays), as PostgreSQL writes it back
AUDIO_NAME_SQL = "regexp_replace(audio_path, '^.*/'::text, ''::text)"


def tenant_metadata_sql(table: str = "") -> str:
    """The expression over the jobs table (``table``: its alias in a query, e.g. "j"), as
    PostgreSQL writes it back (so Alembic sees the index unchanged)."""
    col = f"{table}." if table else ""
    return (
        f"(COALESCE({col}client_metadata, '{{}}'::jsonb) || "
        f"((('{{\"{METADATA_TENANT_KEY}\": \"'::text || {col}tenant_id::text) || '\"}}'::text)::jsonb))"
    )


__all__ = ["BATCH_STATUSES", "FINAL_STATUSES", "JOB_STATUSES"]

JSONType = JSON().with_variant(JSONB(), "postgresql")

BATCH_SOURCES = ("archive", "manifest", "directory")


class Base(DeclarativeBase):
    pass


def _uuid() -> uuid.UUID:
    return uuid.uuid4()


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(200))  # "whsec_..." (Standard Webhooks)
    webhook_secret_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # after a rotation, deliveries are signed with both secrets until the previous one expires
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(200))
    previous_webhook_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    """An API key: shown once, stored as a SHA-256 hash, found by its short public prefix."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class Batch(Base):
    """Many recordings submitted together (an archive, a JSON manifest of URLs, or a server directory).

    Its jobs point at it (``jobs.batch_id``); its counts are computed from them with aggregates.
    ``finished_at`` is set exactly once, by the one UPDATE that sees no open job left
    (``shared.platform.batch_state.finish_batch``); that UPDATE decides who sends the batch's final event.
    """

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
        Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(20))  # archive | manifest | directory
    # preparing (a large server folder still being read in the background) | queued; final:
    # completed | cancelled (the view derives processing from the jobs)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    # channels, decoder, priority, ...; a folder batch's "directory" (relative to TONE_BATCH_ROOT)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)  # [{name, reason}]
    items: Mapped[int] = mapped_column(Integer, default=0)  # names (a job may hold several)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # while preparing: when whoever reads the folder last showed it is alive (a stale one is taken
    # over: api.services.batch_intake)
    prepared_beat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at"),
        # a batch's jobs, and "is any of them still open?" without visiting the finished ones
        Index("ix_jobs_batch_status", "batch_id", "status"),
        # search's metadata filters, within the tenant (tenant_metadata_sql)
        Index(
            "ix_jobs_tenant_metadata",
            literal_column(tenant_metadata_sql()).label("tenant_metadata"),
            postgresql_using="gin",
            postgresql_ops={"tenant_metadata": "jsonb_path_ops"},
        ),
        Index("ix_jobs_audio_name", literal_column(AUDIO_NAME_SQL).label("audio_name")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # SET NULL, not CASCADE: removing a batch row never drops transcripts or leaves audio files
    # behind silently; whoever deletes a batch deletes its jobs (and their audio) first
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20), default="job")  # job | sync (legacy/OpenAI calls)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=5)  # 0 (low) .. 9 (high)
    queue: Mapped[str] = mapped_column(String(40), default="cpu")
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # channels, decoder
    # input
    source: Mapped[str] = mapped_column(String(20), default="upload")  # upload | url
    filename: Mapped[str | None] = mapped_column(String(500))
    content_type: Mapped[str | None] = mapped_column(String(200))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    audio_url: Mapped[str | None] = mapped_column(Text)
    audio_path: Mapped[str | None] = mapped_column(Text)  # where the upload is kept; removed with the job
    audio_info: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # format, codec, rate, channels
    duration: Mapped[float | None] = mapped_column(Float)  # audio seconds
    # progress and timings
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processing_seconds: Mapped[float | None] = mapped_column(Float)
    # reliability
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # outcome
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    # client
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    client_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # conversation analytics, computed when the transcript is stored (shared.platform.analytics)
    analytics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    transcript: Mapped[Transcript | None] = relationship(
        back_populates="job", cascade="all, delete-orphan", uselist=False
    )
    deliveries: Mapped[list[WebhookDelivery]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="WebhookDelivery.created_at"
    )
    flags: Mapped[list[JobFlag]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", passive_deletes=True, order_by="JobFlag.created_at"
    )


class Transcript(Base):
    """One per job (the primary key is the job's id: a job can never get two)."""

    __tablename__ = "transcripts"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    phrases: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)  # the engine's phrase dicts
    full_text: Mapped[str] = mapped_column(Text)
    duration: Mapped[float] = mapped_column(Float)
    channels: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    job: Mapped[Job] = relationship(back_populates="transcript")


# The tenant as one more lexeme of every phrase's tsvector: a search ANDs it into its query, so the
# GIN index itself never yields another tenant's rows (no btree_gin needed; '@' never starts a
# lexeme the parser makes). shared.platform.search builds the same lexeme for the query.
PHRASE_TSV = (
    "to_tsvector('russian'::regconfig, text) || "
    "array_to_tsvector(ARRAY['@' || replace(tenant_id::text, '-', '')])"
)


class TranscriptPhrase(Base):
    """The search index: one row per phrase of a stored transcript, its text being the phrase's
    display text when it has one, else its words (``shared.platform.search.phrase_search_text``).
    Written with the transcript; removed with the job (cascade)."""

    __tablename__ = "transcript_phrases"
    __table_args__ = (Index("ix_transcript_phrases_tsv", "tsv", postgresql_using="gin"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)  # the phrase's place in the transcript
    tenant_id: Mapped[uuid.UUID] = mapped_column()
    channel: Mapped[int] = mapped_column(SmallInteger, default=0)
    start_time: Mapped[float] = mapped_column(Float)
    end_time: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    tsv: Mapped[str] = mapped_column(TSVECTOR, Computed(PHRASE_TSV, persisted=True))


RULE_KINDS = ("phrase_contains", "missing_in_first", "silence_over", "overtalk_share_over")


class Rule(Base):
    """A tenant's rule over finished transcripts (``shared.platform.rules``); a match flags the job."""

    __tablename__ = "rules"
    __table_args__ = (Index("ix_rules_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class JobFlag(Base):
    """A rule that matched a job's transcript, with what matched."""

    __tablename__ = "job_flags"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    rule_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rules.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    rule: Mapped[Rule] = relationship(lazy="joined")


class WebhookDelivery(Base):
    """Every attempt to deliver one event: its time, status code, latency and error. An event is a
    job's (``job.*``) or a batch's (``batch.*``): exactly one of ``job_id`` and ``batch_id`` is set."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("(job_id IS NULL) <> (batch_id IS NULL)", name="ck_webhook_deliveries_one_subject"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=_uuid)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[str] = mapped_column(String(100), index=True)  # webhook-id: the same for retries
    event_type: Mapped[str] = mapped_column(String(60))
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    success: Mapped[bool] = mapped_column(Boolean, default=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    job: Mapped[Job | None] = relationship(back_populates="deliveries")


class TenantVocabulary(Base):
    """A tenant's default vocabulary (hot words) and replacements, managed over ``/v1/vocabulary``:
    added to the lists of every job and batch the tenant submits."""

    __tablename__ = "tenant_vocabularies"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    words: Mapped[list[str]] = mapped_column(JSONType, default=list)
    replacements: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
