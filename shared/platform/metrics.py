"""The platform's Prometheus counters and histograms, kept in Redis and updated when things happen.

A worker that finishes a job, a worker that starts one, the API answering a live piece: each adds to
the counters and histograms here (one Redis pipeline, a few fields), and ``/metrics`` reads them back
(a few small hashes), so a scrape never scans the jobs table, and every process on every machine
counts into the same numbers. Counters only grow (Prometheus treats a Redis flush as a reset).

- ``tone_jobs_finished_total{status}``: jobs that reached completed, failed or cancelled;
- ``tone_audio_seconds_processed_total``, ``tone_processing_seconds_total``: of completed jobs;
- ``tone_queue_wait_seconds``: submission to the first start on a worker;
- ``tone_job_latency_seconds``: submission to the end (any final status);
- ``tone_live_piece_latency_seconds``: a live piece's arrival at the API to its answer (an API
  process tallies these itself and adds them to Redis once a second and before it answers a
  scrape: one Redis call per piece was a fifth of the API's round trips per piece).

Recording never raises: metrics must not fail a job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger("tone.metrics")

PREFIX = "tone:metrics:"
COUNTERS_KEY = PREFIX + "counters"

_WAIT_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    14400.0,
)
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "tone_queue_wait_seconds": (
        "Seconds from a job's submission to its first start on a worker",
        _WAIT_BUCKETS,
    ),
    "tone_job_latency_seconds": (
        "Seconds from a job's submission to its end (any final status)",
        _WAIT_BUCKETS,
    ),
    "tone_live_piece_latency_seconds": (
        "Seconds from a live piece's arrival at the API to its answer",
        (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0),
    ),
}
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tone_jobs_finished_total": ("Jobs that ended, by final status", ("status",)),
    "tone_audio_seconds_processed_total": ("Audio seconds of completed jobs", ()),
    "tone_processing_seconds_total": ("Worker seconds spent on completed jobs", ()),
}


def _field(name: str, labels: Mapping[str, str]) -> str:
    return name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, *pairs = field.split("|")
    return name, dict(p.split("=", 1) for p in pairs)


@lru_cache
def client_for(url: str) -> Any:
    """A Redis client for recording (short timeouts: a slow Redis must not hold a job up)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


class Recorder:
    """Adds to the counters and histograms in one pipeline (``flush``), never raising."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pipe = client.pipeline(transaction=False) if client is not None else None

    def count(self, name: str, amount: float = 1.0, **labels: str) -> Recorder:
        assert name in COUNTERS, name
        if self.pipe is not None and amount:
            self.pipe.hincrbyfloat(COUNTERS_KEY, _field(name, labels), float(amount))
        return self

    def observe(self, name: str, seconds: float) -> Recorder:
        if seconds >= 0:
            self.add(name, {_bucket(name, seconds): 1}, seconds)
        return self

    def add(self, name: str, counts: Mapping[str, int], total: float) -> Recorder:
        """Observations of histogram ``name`` at once: the count per bucket, the sum of the values."""
        if self.pipe is None or not counts:
            return self
        key = PREFIX + name
        for bucket, n in counts.items():
            self.pipe.hincrby(key, bucket, n)
        self.pipe.hincrbyfloat(key, "sum", float(total))
        return self

    def flush(self) -> None:
        if self.pipe is None:
            return
        try:
            self.pipe.execute()
        except Exception as exc:  # Redis trouble: lose these samples, never the job
            log.warning("metrics not recorded: %s", exc)

    async def flush_async(self, timeout: float = 2.0) -> None:
        """``flush`` for a Recorder made on an asyncio Redis client (the API's event loop)."""
        if self.pipe is None:
            return
        try:
            await asyncio.wait_for(self.pipe.execute(), timeout)
        except Exception as exc:  # Redis trouble: lose these samples, never the answer
            log.warning("metrics not recorded: %s", exc)


def _bucket(name: str, seconds: float) -> str:
    return next((str(b) for b in HISTOGRAMS[name][1] if seconds <= b), "+Inf")


class Tally:
    """Histogram observations kept in this process until ``drain`` adds them to a Recorder (for
    events too frequent for a Redis call each: live pieces). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}
        self._sums: dict[str, float] = {}
        self.drained = time.monotonic()

    def observe(self, name: str, seconds: float) -> None:
        if seconds < 0:
            return
        bucket = _bucket(name, seconds)
        with self._lock:
            self._counts.setdefault(name, Counter())[bucket] += 1
            self._sums[name] = self._sums.get(name, 0.0) + seconds

    def due(self, every: float) -> bool:
        return bool(self._counts) and time.monotonic() - self.drained >= every

    def drain(self, recorder: Recorder) -> Recorder:
        """Move everything tallied so far onto ``recorder`` (its flush writes it)."""
        with self._lock:
            counts, sums, self._counts, self._sums = self._counts, self._sums, {}, {}
            self.drained = time.monotonic()
        for name, by_bucket in counts.items():
            recorder.add(name, by_bucket, sums[name])
        return recorder


def job_finished(
    client: Any,
    status: str,
    latency_seconds: float | None,
    audio_seconds: float | None = None,
    processing_seconds: float | None = None,
) -> None:
    r = Recorder(client)
    record_job_finished(r, status, latency_seconds, audio_seconds, processing_seconds)
    r.flush()


def record_job_finished(
    r: Recorder,
    status: str,
    latency_seconds: float | None,
    audio_seconds: float | None = None,
    processing_seconds: float | None = None,
) -> None:
    """A finished job's counters, added to ``r`` (flushed by the caller: many jobs, one write)."""
    r.count("tone_jobs_finished_total", 1.0, status=status)
    if latency_seconds is not None:
        r.observe("tone_job_latency_seconds", latency_seconds)
    if status == "completed":
        r.count("tone_audio_seconds_processed_total", audio_seconds or 0.0)
        r.count("tone_processing_seconds_total", processing_seconds or 0.0)


def collect(client: Any) -> Iterator[Metric]:
    """The counters and histograms as Prometheus metric families (every one, zero when unseen)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(COUNTERS_KEY)
    for name in HISTOGRAMS:
        pipe.hgetall(PREFIX + name)
    counters_raw, *hists = pipe.execute()
    values: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in COUNTERS}
    for field, value in (counters_raw or {}).items():
        name, labels = _parse(field.decode() if isinstance(field, bytes) else field)
        if name in values:
            values[name].append((labels, float(value)))
    for name, (doc, label_names) in COUNTERS.items():
        family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=list(label_names))
        seen = values[name] or ([] if label_names else [({}, 0.0)])
        for labels, value in sorted(seen, key=lambda x: sorted(x[0].items())):
            family.add_metric([labels.get(n, "") for n in label_names], value)
        yield family
    for (name, (doc, buckets)), raw in zip(HISTOGRAMS.items(), hists, strict=True):
        fields = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in (raw or {}).items()}
        total, cumulative = 0.0, []
        for le in (*(str(b) for b in buckets), "+Inf"):
            total += fields.get(le, 0.0)
            cumulative.append((le, total))
        histogram = HistogramMetricFamily(name, doc)
        histogram.add_metric([], cumulative, sum_value=fields.get("sum", 0.0))
        yield histogram
