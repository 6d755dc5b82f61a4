"""The Celery application: every reliability setting in one place.

Tasks take ids, never payloads; JSON only. ``acks_late`` + ``task_reject_on_worker_lost`` put a
message back when a worker dies mid-task; ``worker_prefetch_multiplier=1`` keeps queued work where
other workers can take it; the beat task ``tone.requeue_stuck`` re-sends jobs whose message was
lost or whose worker's lease expired, and the job row (not the message) decides who may write a
result, so a job is never transcribed into two results.

Queues. A transcription task holds its worker process for as long as it keeps a batch of
recordings going (a big archive: hours), so nothing that must answer quickly shares its queue:

- ``cpu`` / ``gpu``: ``tone.transcribe`` (the model, batched);
- ``cpu.live`` / ``gpu.live``: ``tone.stream``, live sessions' pieces (the model, low latency);
- ``events``: webhooks and beat's sweeps (no model).

``tone-platform up`` and docker-compose run one worker per role; a single worker may also consume
all three (``-Q cpu,cpu.live,events``), as the tests do, at the price of live pieces and webhooks
waiting behind a long batch.
"""

from __future__ import annotations

import uuid

from celery import Celery

from shared.platform.settings import get_settings

TRANSCRIBE_TASK = "tone.transcribe"
WEBHOOK_TASK = "tone.webhook"
REQUEUE_TASK = "tone.requeue_stuck"
STREAM_TASK = "tone.stream"
QUEUES = ("cpu", "gpu")
EVENTS_QUEUE = "events"


def live_queue(queue: str) -> str:
    """The Celery queue of ``queue``'s live sessions (``cpu`` -> ``cpu.live``)."""
    return f"{queue}.live"


def all_queues(queue: str) -> str:
    """Every Celery queue of a single all-in-one worker for ``queue`` (a ``-Q`` value)."""
    return f"{queue},{live_queue(queue)},{EVENTS_QUEUE}"


def make_app() -> Celery:
    settings = get_settings()
    include = ["worker.tasks", "worker.webhooks", "worker.streaming", "worker.retention"]
    app = Celery("tone", broker=settings.redis_url, include=include)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds + 60,
        task_soft_time_limit=settings.task_time_limit_seconds,
        task_default_queue=settings.worker_queue,
        task_default_priority=5,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": 3600,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        beat_schedule={
            "requeue-stuck-jobs": {"task": REQUEUE_TASK, "schedule": 15.0, "options": {"queue": EVENTS_QUEUE}}
        },
        timezone="UTC",
    )
    return app


app = make_app()


def enqueue_transcription(job_id: str, *, queue: str, priority: int) -> None:
    """Send ``tone.transcribe`` for a committed job. Job priority 9 is the most urgent; on Redis,
    Celery's priority 0 is served first, so it is inverted here, in one place."""
    app.send_task(TRANSCRIBE_TASK, args=[job_id], queue=queue, priority=9 - max(0, min(9, priority)))


def new_event_id() -> str:
    """A fresh ``webhook-id``: a new event, as a user's redelivery is."""
    return f"evt_{uuid.uuid4().hex}"


def enqueue_webhook(job_id: str, event_type: str, *, queue: str = EVENTS_QUEUE, again: bool = False) -> None:
    """Send ``tone.webhook`` for a job's or a batch's final event (job.completed, batch.completed, ...).
    By default it is the event's first delivery (its id derived from the subject: sent once however
    many tasks ask); ``again``: a new event with a new id (a redelivery asked for by a user)."""
    args: list[object] = [job_id, event_type] + ([1, new_event_id()] if again else [])
    app.send_task(WEBHOOK_TASK, args=args, queue=queue, priority=0)
