"""One task run: the claimed jobs advanced together, with progress, leases, cancels and outcomes.

:class:`BatchRun` takes the jobs a ``tone.transcribe`` run claimed, opens their audio (downloading
``audio_url`` jobs first), claims more waiting jobs of the same queue while it has room (up to
``worker_batch`` recordings per model call), and drives a :class:`~worker.processing.BatchRunner`.
About once a second it writes each job's progress, renews its lease and reads its cancel flag.
Each job ends on its own: completed with its transcript, failed with the engine's error code,
cancelled, or dropped silently when another worker took its lease over.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.asr.engine import Recognizer
from shared.asr.errors import ToneError
from shared.asr.types import LABELS, ChannelMode
from shared.platform import logs
from shared.platform.batch_state import Finished
from shared.platform.rules import FLAGGED_EVENT
from shared.platform.settings import Settings
from shared.text.display import display_phrases
from shared.text.options import TextOptions
from worker.processing import BatchRunner, Outcome, Work
from worker.store import Claimed, Completion, JobStore

HEARTBEAT_SECONDS = 1.0  # progress, lease renewal and cancel checks
DOWNLOADS = 4  # audio_url downloads one run makes at once, beside its model batch
IDLE_SECONDS = 0.2  # how often a run with only downloads in flight looks at them
PROGRESS_CAP = 0.99  # until the transcript is stored
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    KombuOperationalError,
)

current_job: ContextVar[str] = ContextVar("current_job", default="-")


class JobLog(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    """Every line names its job and the request that made it: ``job=<id> request_id=<id> message``
    (``job=`` keyword, else the task's job; JSON lines get ``job_id`` and ``request_id`` fields)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        job = kwargs.pop("job", None) or current_job.get()
        rid = logs.job_request_id(job) or logs.request_id.get()
        kwargs["extra"] = {**kwargs.get("extra", {}), "job_id": job, "request_id": rid}
        return (f"job={job} request_id={rid} {msg}" if rid else f"job={job} {msg}"), kwargs


log = JobLog(logging.getLogger("tone.worker"), {})


# -- the model, once per process -------------------------------------------------------------------

MODEL_RETRY_SECONDS = 30.0  # after a failed load, jobs fail with its error this long before a retry
_model_lock = threading.Lock()
_recognizer: Recognizer | None = None
_load_failure: tuple[float, Exception] | None = None


def get_recognizer(settings: Settings) -> Recognizer:
    """The process's Recognizer, loaded on first use with the settings' model, provider, threads,
    precision and decoder. Raises the engine's ModelError (model_not_found, model_contract_mismatch)."""
    global _recognizer, _load_failure
    with _model_lock:
        if _recognizer is None:
            if _load_failure is not None and time.monotonic() - _load_failure[0] < MODEL_RETRY_SECONDS:
                raise _load_failure[1]
            started = time.perf_counter()
            try:
                _recognizer = Recognizer.load(
                    settings.model_path,
                    providers=settings.provider,
                    threads=settings.threads,
                    decoder=settings.decoder,
                    precision=settings.precision,
                    decoder_workers=settings.decoder_workers,
                    spinning=settings.ort_spinning,
                    lanes=settings.lanes,
                )
            except Exception as exc:
                _load_failure = (time.monotonic(), exc)
                _report_model(settings, exc)
                raise
            _load_failure = None
            _report_model(settings, None)
            # one step at the batch this worker runs (stereo: two streams a recording), under the
            # lock, so the first job finds the runtime's memory and threads ready
            b = 2 * settings.worker_batch
            try:
                warm = f"; a warm-up step at B={b} in {_recognizer.warm_up(b):.3f} s"
            except Exception as exc:  # a model that loaded but cannot step fails its jobs itself
                warm = f"; the warm-up step failed: {exc}"
            pool = _recognizer.pool
            log.info(
                "model loaded from %s in %.2f s (%d lanes; decoder %s, LM %s, %s)%s",
                settings.model_path or "Hugging Face",
                time.perf_counter() - started,
                max(1, len(_recognizer.model.lanes)),
                _recognizer.default_decoder,
                _recognizer.lm_path or "none",
                f"{pool.workers} decoder processes" if pool is not None else "decoding inline",
                warm,
                job="-",
            )
        return _recognizer


def _report_model(settings: Settings, error: BaseException | None) -> None:
    """Tell /health (through Redis) how this worker's model load went."""
    import redis

    from shared.platform import model_status

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        model_status.report(client, settings.worker_queue, error)
    finally:
        client.close()


# -- errors -> job error codes ----------------------------------------------------------------------


def error_of(
    exc: BaseException, audio_path: str | None = None, shown: str = "the recording"
) -> tuple[str, str]:
    """(code, message) for a job that failed on ``exc``; the server's file path is not shown."""
    if isinstance(exc, ToneError):
        return exc.code, exc.public_message(audio_path, shown)
    if isinstance(exc, FileNotFoundError):
        return "file_not_found", "the job's audio file is missing"
    code = getattr(exc, "code", None)  # netguard's typed errors: url_forbidden, download_failed, ...
    if isinstance(code, str) and code:
        return code, str(getattr(exc, "message", None) or exc)
    return "internal_error", f"unexpected error while transcribing ({type(exc).__name__})"


def notify_batch_end(finished: Finished) -> None:
    """Log a batch's end and queue its one ``batch.completed`` / ``batch.cancelled`` event."""
    from shared.queue import enqueue_webhook

    log.info("batch %s %s", finished.id, finished.status, job="-")
    if finished.webhook_url:
        try:
            enqueue_webhook(finished.id, finished.event)
        except Exception:  # beat's webhook sweep sends it once the batch has been over for 2 minutes
            log.exception(
                "could not send the %s webhook task of batch %s", finished.event, finished.id, job="-"
            )


# -- one run ----------------------------------------------------------------------------------------


class BatchRun:
    def __init__(self, store: JobStore, settings: Settings, *, batching: bool = True) -> None:
        self.store = store
        self.settings = settings
        self.batching = batching and settings.worker_batch > 1
        self.jobs: dict[str, Claimed] = {}
        self.runner: BatchRunner | None = None
        # audio_url jobs being downloaded in the background: (the download, its stop flag)
        self.downloads: dict[str, tuple[Future[tuple[int, str, str | None]], threading.Event]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.queue = "cpu"
        self.refill_until = time.monotonic() + settings.task_time_limit_seconds / 2
        self._drained = False  # the last claim found fewer jobs than it had room for

    # outcomes

    def _notify(self, job: Claimed, event: str) -> None:
        """After the job's final state was committed: its own webhook (when it has a URL), then
        its batch's end, when it was the batch's last open job (exactly one caller finishes it)."""
        self._webhook(job, event)
        self._end_batches([job.batch_id] if job.batch_id else [])

    def _webhook(self, job: Claimed, event: str) -> None:
        from shared.queue import enqueue_webhook

        if job.webhook_url:
            try:
                enqueue_webhook(job.id, event)
            except Exception:
                log.exception("could not send the %s webhook task", event, job=job.id)

    def _end_batches(self, batch_ids: list[str]) -> None:
        """The batches whose jobs just became final (committed): each one that has no open job
        left ends now, with its one event (one UPDATE for all of a round's batches)."""
        if not batch_ids:
            return
        try:
            finished = self.store.finish_batches(batch_ids)
        except TRANSIENT_ERRORS:  # the beat's sweep finishes them later
            log.warning("could not check whether batches %s ended", " ".join(sorted(set(batch_ids))))
            return
        for batch in finished:
            notify_batch_end(batch)

    def _failed(self, job: Claimed, exc: BaseException) -> None:
        code, message = error_of(exc, job.audio_path, job.audio_url or "the recording")
        if code == "internal_error":
            log.error("failed: %s", message, exc_info=exc, job=job.id)
        else:
            log.info("failed: %s: %s", code, message, job=job.id)
        if self.store.fail(job.id, code, message):
            self._notify(job, "job.failed")

    def _stop_download(self, job_id: str) -> None:
        pending = self.downloads.pop(job_id, None)
        if pending is not None:
            pending[1].set()

    def _cancelled(self, job: Claimed) -> None:
        self._stop_download(job.id)
        if self.runner is not None:
            self.runner.stop(job.id)
        if self.store.cancel(job.id):
            log.info("cancelled", job=job.id)
            self._notify(job, "job.cancelled")

    def _lost(self, job_id: str) -> None:
        self._stop_download(job_id)
        if self.runner is not None:
            self.runner.stop(job_id)
        self.jobs.pop(job_id, None)
        log.warning("lease lost (taken over or deleted): dropping this job's work", job=job_id)

    def _notify_flags(self, job: Claimed, rule_ids: list[str]) -> None:
        """One ``job.flagged`` event per rule the transcript matched (to the job's webhook_url, else
        its batch's)."""
        from shared.queue import enqueue_webhook

        if not (job.webhook_url or job.batch_id):
            return
        for rule_id in rule_ids:
            try:
                enqueue_webhook(job.id, f"{FLAGGED_EVENT}:{rule_id}")
            except Exception:
                log.exception("could not send the job.flagged webhook task of rule %s", rule_id, job=job.id)

    def _finish_round(self, outcomes: list[Outcome]) -> None:
        """A round's results: failures one by one; the transcripts stored together, in one
        transaction (:meth:`JobStore.complete_many`), then their events, then one end check for
        the batches they belong to."""
        ready: list[tuple[Claimed, Any, list[dict[str, Any]], str | None]] = []
        for outcome in outcomes:
            job = self.jobs.pop(outcome.job_id)
            if outcome.transcript is None:
                self._failed(job, outcome.error or RuntimeError("no transcript"))
                continue
            try:
                phrases, audio_path = self._written(job, outcome.transcript)
            except Exception as exc:  # a recording that cannot be redacted must not be kept unredacted
                log.exception("redaction failed", job=job.id)
                if job.options.get("redact_audio") and job.audio_path and job.source != "directory":
                    Path(job.audio_path).unlink(missing_ok=True)
                self._failed(job, _RedactionError(exc))
                continue
            ready.append((job, outcome.transcript, phrases, audio_path))
        if not ready:
            return
        stored = self.store.complete_many([Completion(j.id, t, ph, path) for j, t, ph, path in ready])
        batches = []
        for job, t, _, audio_path in ready:
            if audio_path and job.audio_path:  # the redacted recording replaced the original, or is unused
                if not stored[job.id]:
                    Path(audio_path).unlink(missing_ok=True)
                elif job.source != "directory":  # a server folder's files are never deleted
                    Path(job.audio_path).unlink(missing_ok=True)
            if not stored[job.id]:
                log.warning("lease lost before the result was stored: result dropped", job=job.id)
                continue
            log.info(
                "completed: %.1f s of audio, %d phrases, in %.2f s",
                t.duration,
                len(t.phrases),
                t.processing_time,
                job=job.id,
            )
            self._webhook(job, "job.completed")
            self._notify_flags(job, self.store.flagged.pop(job.id, []))
            if job.batch_id:
                batches.append(job.batch_id)
        self._end_batches(batches)

    def _written(self, job: Claimed, t: Any) -> tuple[list[dict[str, Any]], str | None]:
        """The phrases with their written form (normalized, replaced, redacted as the job asked)
        and, with ``redact_audio``, the path of the redacted recording that replaces the upload."""
        options = TextOptions.from_stored(job.options)
        phrases, redactions = display_phrases([p.to_dict() for p in t.phrases], options)
        audio_path = None
        if options.redact_audio and job.audio_path:
            from worker.redaction import redact_recording

            split = job.options.get("channels") == "split"
            dest = self.settings.audio_path / f"{job.id}.redacted.wav"
            audio_path = str(redact_recording(Path(job.audio_path), redactions, split=split, dest=dest))
        return phrases, audio_path

    # inputs

    def _fetch(self, job: Claimed, stop: threading.Event) -> tuple[int, str, str | None]:
        """Download ``audio_url`` to the audio directory (a pool thread): bounded by the read
        timeout, the whole deadline, the minimum rate and the job's stop flag (a cancel)."""
        from shared.platform.netguard import DownloadBounds, download

        s = self.settings
        dest = s.audio_path / f"{job.id}.audio"
        dest.parent.mkdir(parents=True, exist_ok=True)
        bounds = DownloadBounds(
            deadline=s.url_download_deadline_seconds or None,
            min_rate=s.url_download_min_bytes_per_second,
            should_stop=stop.is_set,
        )
        return download(
            job.audio_url or "",
            dest,
            max_bytes=s.max_upload_bytes,
            timeout=s.url_download_timeout_seconds,
            allow_private=s.allow_private_urls,
            bounds=bounds,
        )

    def _begin_download(self, job: Claimed) -> None:
        """Start fetching a URL job's audio beside the model batch; it joins the batch once here
        (the job's lease is renewed and its cancel flag read meanwhile, by the heartbeat)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DOWNLOADS, thread_name_prefix="download")
        stop = threading.Event()
        self.downloads[job.id] = (self._pool.submit(self._fetch, job, stop), stop)
        log.info("downloading the job's audio_url in the background", job=job.id)

    def _collect_downloads(self) -> None:
        """Downloads that ended: their job joins the batch, or fails with the download's error."""
        for job_id, (future, _) in list(self.downloads.items()):
            if not future.done():
                continue
            del self.downloads[job_id]
            job = self.jobs.get(job_id)
            if job is None:
                continue
            exc = future.exception()
            if exc is not None:
                if isinstance(exc, TRANSIENT_ERRORS):
                    raise exc
                self.jobs.pop(job_id)
                self._failed(job, exc)
                continue
            size, sha256, content_type = future.result()
            dest = str(self.settings.audio_path / f"{job.id}.audio")
            values: dict[str, Any] = {"audio_path": dest, "size_bytes": size, "sha256": sha256}
            if content_type:
                values["content_type"] = content_type
            log.info("downloaded %d bytes from the job's audio_url", size, job=job_id)
            if not self.store.renew(job_id, **values):
                self._lost(job_id)
                continue
            job = self.jobs[job_id] = dataclasses.replace(job, audio_path=dest)
            self._open(job, dest)

    def _start(self, claimed: list[Claimed]) -> None:
        """Open claimed jobs' audio and add them to the batch (or end them right away), their
        audio's facts written in one transaction; a URL job is downloaded first, in the
        background."""
        opened: dict[str, dict[str, Any]] = {}
        for job in claimed:
            self.jobs[job.id] = job
            if job.cancel_requested:
                self.jobs.pop(job.id)
                self._cancelled(job)
            elif job.source == "url" and not job.audio_path:
                self._begin_download(job)
            else:
                values = self._opened(job, job.audio_path)
                if values is not None:
                    opened[job.id] = values
        self._renew(opened)

    def _open(self, job: Claimed, path: str | None) -> None:
        values = self._opened(job, path)
        if values is not None:
            self._renew({job.id: values})

    def _renew(self, values: dict[str, dict[str, Any]]) -> None:
        """Write what was learned of each opened recording (and renew its lease), in one
        transaction: a job no longer ours is dropped."""
        if values:
            for job_id in set(values) - self.store.renew_many(values):
                self._lost(job_id)

    def _opened(self, job: Claimed, path: str | None) -> dict[str, Any] | None:
        """The job's recording added to the runner; the job's fields to write (None: it failed)."""
        assert self.runner is not None
        try:
            if not path:
                raise FileNotFoundError("no audio_path")
            channels: ChannelMode = "split" if job.options.get("channels") == "split" else "mix"
            decoder = job.options.get("decoder")
            hotwords = TextOptions.from_stored(job.options).hotwords(LABELS)
            if decoder in (None, "auto"):  # a vocabulary needs beam search, with or without the LM
                decoder = "beam" if hotwords else None
            work = Work(job.id, path, channels, decoder, hotwords)
            info = self.runner.add(work)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            self.jobs.pop(job.id)
            self._failed(job, exc)
            return None
        values: dict[str, Any] = {"audio_info": info}
        if info["duration"]:
            values["duration"] = info["duration"]
        return values

    def _refill(self) -> int:
        """Claim waiting jobs of this queue while there is room; how many were added."""
        if not self.batching or self.runner is None or time.monotonic() > self.refill_until:
            return 0
        # recordings waiting only for the decoder pool leave their room to new ones: the model
        # goes on with a full batch (the runner bounds the pool's backlog)
        room = self.settings.worker_batch - self.runner.stepping - len(self.downloads)
        if room <= 0:
            return 0
        claimed = self.store.claim_orphans(self.queue, room)  # a dead worker's jobs first
        if claimed:
            log.info("took over %d jobs of a dead worker into the running batch", len(claimed))
        claimed += self.store.claim_waiting(self.queue, room - len(claimed))
        self._drained = len(claimed) < room  # none left: no more claims until the heartbeat
        self._start(claimed)
        return len(claimed)

    # the loop

    def _heartbeat(self) -> None:
        assert self.runner is not None
        progress = {
            job_id: min(PROGRESS_CAP, done / duration) if duration > 0 else 0.0
            for job_id, (done, duration) in self.runner.progress().items()
        }
        progress.update(dict.fromkeys(self.downloads, 0.0))
        alive, cancel = self.store.heartbeat(progress)
        for job_id in progress:
            if job_id not in alive:
                self._lost(job_id)
            elif job_id in cancel:
                self._cancelled(self.jobs.pop(job_id))

    def run(self, claimed: list[Claimed]) -> None:
        try:
            recognizer = get_recognizer(self.settings)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            for job in claimed:
                self._failed(job, exc)
            return
        s = self.settings
        self.runner = BatchRunner(recognizer, max_duration=s.max_audio_seconds, max_bytes=s.max_upload_bytes)
        self.queue = claimed[0].queue
        try:
            if self.batching:  # a dead worker's jobs first: they have waited longest
                claimed = claimed + self.store.claim_orphans(self.queue, s.worker_batch - len(claimed))
                claimed = claimed + self.store.claim_waiting(self.queue, s.worker_batch - len(claimed))
            log.info("batch of %d jobs: %s", len(claimed), " ".join(j.id for j in claimed))
            self._start(claimed)
            self._loop()
        except SoftTimeLimitExceeded as exc:
            for job_id in list(self.jobs):
                self._failed(self.jobs.pop(job_id), _TimeLimitError(exc))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # the engine itself failed: every job of the batch fails
            log.exception("the batch failed: %s", exc)
            for job_id in list(self.jobs):
                self._failed(self.jobs.pop(job_id), exc)
        finally:
            for _, stop in self.downloads.values():
                stop.set()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.runner.close()

    def _loop(self) -> None:
        assert self.runner is not None
        last = time.monotonic()
        while len(self.runner) or self.downloads:
            if self.downloads:
                self._collect_downloads()
            if len(self.runner):
                self._finish_round(self.runner.round())
            else:
                time.sleep(IDLE_SECONDS)
            added = 0
            if time.monotonic() - last >= HEARTBEAT_SECONDS:
                last = time.monotonic()
                self._heartbeat()
                self._drained = False  # (the queue may have filled since)
                added = self._refill()
            elif not self._drained and self._half_empty():  # a wave ended together: the next now
                added = self._refill()
            if added:
                log.info("%d jobs joined the batch, now %d", added, len(self.runner))

    def _half_empty(self) -> bool:
        """At least half the model's batch is free: worth taking waiting jobs before the next
        heartbeat. (Joins one at a time cost more than the slot they fill: every join is a change
        of the model batch's members.)"""
        assert self.runner is not None
        return 2 * (self.runner.stepping + len(self.downloads)) <= self.settings.worker_batch


class _RedactionError(Exception):
    code = "redaction_failed"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"the recording could not be redacted: {type(exc).__name__}")
        self.message = str(self)


class _TimeLimitError(Exception):
    code = "time_limit_exceeded"

    def __init__(self, exc: BaseException) -> None:
        super().__init__("the task ran past its time limit")
        self.message = "the task ran past its time limit"
