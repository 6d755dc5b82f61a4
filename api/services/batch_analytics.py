"""A batch's conversation analytics: aggregates over its calls (``GET /v1/batches/{id}/analytics``)
and one row per call (``analytics.csv`` in the results ZIP).

Every call's measures are its job's ``analytics`` (``shared.platform.analytics``), flattened into
columns (``talk_time_agent``, ``talk_time_client``, ...). Aggregates per column: count (calls with a
value), sum, mean, min, p50, p90, max; the same per value of one metadata column (``group_by``,
default ``agent`` when the batch's metadata has it).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.errors import ApiError
from shared.db.models import Job
from shared.platform.analytics import FLAT_COLUMNS, flat

DEFAULT_GROUP = "agent"
MAX_GROUPS = 500


def metadata_keys(db: Session, batch_id: uuid.UUID) -> list[str]:
    """Every metadata key of the batch's jobs, in a stable order (metadata.csv's columns)."""
    rows = db.execute(
        text(
            "SELECT DISTINCT k FROM jobs, jsonb_object_keys(jobs.client_metadata) AS k "
            "WHERE jobs.batch_id = :b AND jsonb_typeof(jobs.client_metadata) = 'object'"
        ),
        {"b": batch_id},
    ).scalars()
    return sorted(rows)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "sum": None, "mean": None, "min": None, "p50": None, "p90": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {
        "count": len(values),
        "sum": round(float(a.sum()), 3),
        "mean": round(float(a.mean()), 3),
        "min": round(float(a.min()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "max": round(float(a.max()), 3),
    }


def _measures(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    columns: dict[str, list[float]] = {c: [] for c in FLAT_COLUMNS}
    for row in rows:
        for c in FLAT_COLUMNS:
            value = row.get(c)
            if isinstance(value, int | float) and not isinstance(value, bool):
                columns[c].append(float(value))
    return {c: summarize(v) for c, v in columns.items()}


def batch_analytics(db: Session, batch_id: uuid.UUID, group_by: str | None) -> dict[str, Any]:
    rows = db.execute(
        select(Job.analytics, Job.client_metadata).where(
            Job.batch_id == batch_id, Job.status == "completed", Job.analytics.is_not(None)
        )
    ).all()
    keys = metadata_keys(db, batch_id)
    if group_by is None and DEFAULT_GROUP in keys:
        group_by = DEFAULT_GROUP
    elif group_by is not None and group_by not in keys:
        raise ApiError(422, "invalid_request", f"no metadata column {group_by!r} in this batch (it has: "
                       f"{', '.join(keys) or 'none'})")  # fmt: skip
    flats = [(flat(a), m if isinstance(m, dict) else {}) for a, m in rows]
    out: dict[str, Any] = {
        "batch_id": str(batch_id),
        "calls": len(flats),
        "metadata_columns": keys,
        "measures": _measures(f for f, _ in flats),
        "group_by": group_by,
        "groups": [],
    }
    if group_by is not None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for f, meta in flats:
            value = meta.get(group_by)
            groups.setdefault("" if value is None else str(value), []).append(f)
        out["groups"] = [
            {"value": value, "calls": len(members), "measures": _measures(members)}
            for value, members in sorted(groups.items())[:MAX_GROUPS]
        ]
    return out


ANALYTICS_CSV = "analytics.csv"


def _cell(value: Any) -> str:
    """A CSV cell as Excel in a Russian locale reads it: decimal comma, empty for none."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}".replace(".", ",")
    return str(value)


class AnalyticsCsv:
    """``analytics.csv``: one row per call (the file, its metadata columns, every measure), UTF-8
    with a BOM, semicolons and decimal commas, as Excel on a Russian Windows opens it."""

    def __init__(self, metadata_columns: Sequence[str]) -> None:
        self.keys = list(metadata_columns)
        self.buf = io.StringIO()
        self.buf.write("\ufeff")
        self.writer = csv.writer(self.buf, delimiter=";", lineterminator="\r\n")
        self.writer.writerow(["name", "job_id", *self.keys, *FLAT_COLUMNS])

    def add(self, name: str, job: Job) -> None:
        meta = job.client_metadata if isinstance(job.client_metadata, dict) else {}
        measures = flat(job.analytics)
        self.writer.writerow(
            [
                name,
                str(job.id),
                *(_cell(meta.get(k)) for k in self.keys),
                *(_cell(measures[c]) for c in FLAT_COLUMNS),
            ]
        )

    def body(self) -> bytes:
        return self.buf.getvalue().encode("utf-8")
