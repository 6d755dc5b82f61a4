"""Job and batch statuses: one dependency-free home (the database models, the API's schemas and the
batch accounting import them from here)."""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
BatchStatus = Literal["preparing", "queued", "processing", "completed", "cancelled"]

JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
BATCH_STATUSES: tuple[str, ...] = get_args(BatchStatus)
OPEN_STATUSES = ("queued", "processing")  # a job still waiting for, or holding, a worker
FINAL_STATUSES = ("completed", "failed", "cancelled")  # a job that will not change again
