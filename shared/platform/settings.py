"""The platform's one Settings object, read from the environment (documented in the README).

The engine (``shared.asr``) never imports this: the API, the workers and the CLI read settings
and pass plain arguments to the engine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CUDA_WORKER_BATCH = 256


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TONE_", extra="ignore")

    @model_validator(mode="after")
    def _batch_for_the_device(self) -> Settings:
        """A GPU wants many streams per model call: with TONE_PROVIDER=cuda and no
        TONE_WORKER_BATCH, a worker batches 256 recordings (the CPU's 16 saturate two cores)."""
        if "worker_batch" not in self.model_fields_set and self.provider == "cuda":
            self.worker_batch = CUDA_WORKER_BATCH
        return self

    @field_validator("ort_spinning", mode="before")
    @classmethod
    def _spinning_as_a_flag(cls, value: object) -> object:
        """TONE_ORT_SPINNING=1 / 0 (the flag it was before "steps") reads as always / never."""
        flags = {
            "1": "always",
            "true": "always",
            "on": "always",
            "0": "never",
            "false": "never",
            "off": "never",
        }
        return flags.get(str(value).strip().lower(), value) if isinstance(value, (str, bool, int)) else value

    # servers
    database_url: str = Field(
        "postgresql+psycopg://tone:tone@127.0.0.1:5433/tone",
        validation_alias=AliasChoices("DATABASE_URL", "TONE_DATABASE_URL"),
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6380/0", validation_alias=AliasChoices("REDIS_URL", "TONE_REDIS_URL")
    )
    data_dir: Path = Path(".data")  # audio uploads and, for `tone-platform up`, the local servers
    audio_dir: Path | None = None  # default: data_dir / "audio"

    # engine (passed to Recognizer.load)
    model_path: str | None = None  # TONE_MODEL_PATH; unset: Hugging Face
    provider: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    decoder: str = "auto"
    decoder_workers: int = 0  # TONE_DECODER_WORKERS: beam-search processes beside the model (0: inline)
    # TONE_ORT_SPINNING: ORT's threads between ops: spin (always), spin only inside a step (steps:
    # live workers), sleep (never); 1/0 read as always/never
    ort_spinning: Literal["always", "steps", "never"] = "always"
    lanes: int | None = None  # TONE_LANES: sessions stepping a batch's slices at once (CPU; unset: 2)

    # the API
    api_workers: int | None = None  # TONE_API_WORKERS: API processes on one port (unset: 1)

    # limits
    max_upload_bytes: int = 1024 * 1024 * 1024  # 1 GiB
    max_audio_seconds: float = 4 * 3600.0
    rate_limit_per_minute: int = 600  # requests per API key per minute (Redis counters)
    auth_failures_per_minute: int = 30  # wrong API keys per client address per minute, then 429
    scrape_token: str | None = None  # shows /health's details to monitoring without an API key
    batch_max_entries: int = 10000  # entries in one batch archive
    batch_max_total_bytes: int = 20 * 1024**3  # uncompressed bytes of one batch archive
    batch_root: Path | None = None  # TONE_BATCH_ROOT: server folder whose subfolders batches may read
    # a folder with more audio files is read in the background (the batch answers 202 "preparing")
    batch_inline_files: int = 200
    batch_early_start: bool = True  # a ZIP's jobs start while it uploads (api.services.archive_stream)
    batch_intake_chunk: int = 32  # files of such a folder per transaction (their jobs start at once)
    batch_intake_stale_seconds: float = 60.0  # a reader silent this long is taken over
    sync_timeout_seconds: float = 600.0  # /transcribe and /v1/audio/transcriptions wait this long

    # logs
    log_format: Literal["text", "json"] = "text"  # TONE_LOG_FORMAT=json: one JSON object per line

    # auth
    auth_disabled: bool = False  # only for local use: every request acts as the tenant "local"
    ws_query_keys: bool = False  # /vosk, /api/ws, /v1/stream also take ?api_key= (clients without headers)
    metrics_token: str | None = None  # /metrics wants `Authorization: Bearer <it>`; unset: loopback only

    # workers
    worker_queue: str = "cpu"  # cpu or gpu: which queue this worker consumes and new jobs go to
    worker_batch: int = 16  # recordings advanced together per model call (unset with provider cuda: 256)
    job_lease_seconds: float = 300.0  # a processing job whose lease expires is re-enqueued
    queued_grace_seconds: float = 120.0  # a queued job older than this with no worker is re-sent
    task_time_limit_seconds: float = 4 * 3600.0

    # live streaming sessions (shared.platform.sessions)
    stream_ttl_seconds: int = 300  # a session lives this long after its last chunk (each extends it)
    stream_chunk_timeout_seconds: float = 30.0  # how long a chunk call waits for its answer (then 504)
    stream_requeue_seconds: float = 5.0  # an unanswered piece is queued again after this (dead worker)
    stream_idle_timeout_seconds: float = 15.0  # a WebSocket stream that sends nothing this long is closed
    stream_checkpoint_seconds: float = 3.0  # a live state is written to Redis this often (0: every piece)
    # admission (503 over_capacity / close 1013 for NEW sessions; open ones are never dropped):
    stream_max_sessions: int = 0  # live sessions active at once on the queue (0: no fixed cap)
    stream_admit_lag_seconds: float = 1.0  # refuse new sessions while live pieces wait longer (0: never)
    stream_shed_lag_seconds: float = 0.3  # a live worker whose pieces wait longer hands sessions on

    # webhooks and audio_url
    allow_private_urls: bool = False  # allow webhook/audio_url targets on private/loopback addresses
    webhook_timeout_seconds: float = 10.0
    webhook_secret_grace_hours: float = 24.0  # after a rotation, the old secret also signs this long
    url_download_timeout_seconds: float = 60.0
    url_download_deadline_seconds: float = 1800.0  # a whole audio_url download
    url_download_min_bytes_per_second: float = 16384.0  # on average, after the first 10 s (0: any)
    idempotency_hours: float = 24.0
    retention_days: float | None = None  # jobs, transcripts and batches ended longer ago are deleted
    audio_retention_days: float | None = None  # stored audio of ended jobs is deleted (transcripts stay)
    stray_file_hours: float = 24.0  # a dead process's leftovers untouched this long go (worker.retention)

    # flower
    flower_user: str = "admin"
    flower_password: str | None = None

    @property
    def audio_path(self) -> Path:
        return self.audio_dir or self.data_dir / "audio"


@lru_cache
def get_settings() -> Settings:
    return Settings()
