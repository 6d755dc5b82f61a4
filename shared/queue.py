"""The task contract between the API and the workers: task names, queue names, how work is sent.

Tasks take ids, never payloads; JSON only. The API, ``tone-platform up`` and the workers import this
module; only the workers import :mod:`worker.celery_app`, which adds the task modules and the beat
schedule to the same Celery configuration. So the arrows run API -> shared <- worker.

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
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

from shared.platform.settings import get_settings

TRANSCRIBE_TASK = "tone.transcribe"
STREAM_TASK = "tone.stream"
WEBHOOK_TASK = "tone.webhook"
WEBHOOK_DUE_TASK = "tone.webhook_due"
REQUEUE_TASK = "tone.requeue_stuck"
RETENTION_TASK = "tone.retention"

QUEUES = ("cpu", "gpu")
EVENTS_QUEUE = "events"


def live_queue(queue: str) -> str:
    """The Celery queue of ``queue``'s live sessions (``cpu`` -> ``cpu.live``)."""
    return f"{queue}.live"


def all_queues(queue: str) -> str:
    """Every Celery queue of a single all-in-one worker for ``queue`` (a ``-Q`` value)."""
    return f"{queue},{live_queue(queue)},{EVENTS_QUEUE}"


def celery_config() -> dict[str, Any]:
    """Every reliability setting in one place, for senders and workers alike.

    ``acks_late`` + ``task_reject_on_worker_lost`` put a message back when a worker dies mid-task;
    ``worker_prefetch_multiplier=1`` keeps queued work where other workers can take it; the job row
    (not the message) decides who may write a result, so a job is never transcribed into two results.
    """
    settings = get_settings()
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit_seconds + 60,
        "task_soft_time_limit": settings.task_time_limit_seconds,
        "task_default_queue": settings.worker_queue,
        "task_default_priority": 5,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        "worker_hijack_root_logger": False,
        "worker_direct": True,  # a queue per node: a live worker's next run stays on it
        "worker_send_task_events": True,  # for Flower
        "task_send_sent_event": True,
        "timezone": "UTC",
    }


class BrokerTransport(kombu_redis.Transport):
    """kombu's Redis transport, except that it keeps its connection's parameters once the
    connection has released it (issue 16, item 5: a Redis restart killed the events worker).

    When a worker loses the broker, Celery (5.7, ``on_connection_error_after_connected``) calls
    ``connection.collect()`` and then ``connection.close()``. In ``collect()`` the close of the
    consumer's channel is cut short (finishing its BRPOP read raises a connection error, which is
    swallowed), and then kombu drops the transport's ``client`` (``_do_close_transport``). The
    second close goes on with that channel: it restores the unacknowledged messages ("Restoring N
    unacknowledged message(s)") through a new pool whose parameters come from ``client`` (kombu's
    ``Channel._connparams``), so ``None.hostname`` raises AttributeError, which is neither a
    connection nor a channel error: "Unrecoverable error" and the worker exits. Any task in flight
    (acks_late) leaves such a message, and so does its late ack on the old channel. With the
    parameters kept, the restore and the acks reach Redis (or fail with a connection error, which
    Celery handles) and the worker reconnects. Only worker processes use it
    (``worker.celery_app``): Flower reads the broker's kind from the URL this class would change."""

    _client: Any = None

    @property
    def client(self) -> Any:
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        if value is not None:  # kombu's release sets None; the channels still need the parameters
            self._client = value


BROKER_TRANSPORT = f"{__name__}:{BrokerTransport.__name__}"


def worker_transport(broker_url: str) -> str | None:
    """The ``broker_transport`` of a worker process for ``broker_url``: None (kombu's own, from
    the URL's scheme) for anything but a plain ``redis://`` URL."""
    return BROKER_TRANSPORT if broker_url.split("://", 1)[0] == "redis" else None


def make_app(include: list[str] | None = None) -> Celery:
    """A Celery app on the configured broker; senders need no ``include``."""
    app = Celery("tone", broker=get_settings().redis_url, include=include or [])
    app.conf.update(celery_config())
    return app


@lru_cache(maxsize=1)
def client() -> Celery:
    """The sender's Celery app (the API, ``up``): the broker and the serializers, no task modules.
    In a worker process it is the worker's own app, so one connection pool serves both."""
    import sys

    worker_app = sys.modules.get("worker.celery_app")
    if worker_app is not None:
        app: Celery = worker_app.app
        return app
    return make_app()


def send(
    task: str, args: list[Any], *, queue: str, priority: int = 0, countdown: float | None = None
) -> None:
    from shared.platform.logs import request_id

    rid = request_id.get()  # the API request (or task) that sends this: the worker's lines name it
    client().send_task(
        task,
        args=args,
        queue=queue,
        priority=priority,
        countdown=countdown or None,
        headers={"request_id": rid} if rid else None,
    )


def enqueue_transcription(job_id: str, *, queue: str, priority: int) -> None:
    """Send ``tone.transcribe`` for a committed job. Job priority 9 is the most urgent; on Redis,
    Celery's priority 0 is served first, so it is inverted here, in one place."""
    send(TRANSCRIBE_TASK, [job_id], queue=queue, priority=9 - max(0, min(9, priority)))


def enqueue_stream(queue: str, *, node: str = "", holder: str = "") -> None:
    """Wake a live worker of ``queue``'s role: a session has a piece waiting (``tone.stream``).
    With ``node``: the next run of a live worker that still serves, on that Celery node's own queue
    (``worker_direct``), naming the worker (``holder``) whose sessions it continues."""
    if node:
        from celery.utils.nodenames import worker_direct

        client().send_task(STREAM_TASK, args=[queue, holder], queue=worker_direct(node), priority=0)
        return
    send(STREAM_TASK, [queue], queue=live_queue(queue), priority=0)


def new_event_id() -> str:
    """A fresh ``webhook-id``: a new event, as a user's redelivery is."""
    return f"evt_{uuid.uuid4().hex}"


def enqueue_webhook(job_id: str, event_type: str, *, queue: str = EVENTS_QUEUE, again: bool = False) -> None:
    """Send ``tone.webhook`` for a job's or a batch's final event (job.completed, batch.completed, ...).
    By default it is the event's first delivery (its id derived from the subject: sent once however
    many tasks ask); ``again``: a new event with a new id (a redelivery asked for by a user)."""
    args: list[Any] = [job_id, event_type] + ([1, new_event_id()] if again else [])
    send(WEBHOOK_TASK, args, queue=queue, priority=0)


def enqueue_webhook_attempt(
    subject_id: str,
    event_type: str,
    attempt: int,
    event_id: str,
    *,
    queue: str = EVENTS_QUEUE,
    countdown: float = 0,
) -> None:
    """Send attempt ``attempt`` of an event already made (retries, beat's due sweep)."""
    send(WEBHOOK_TASK, [subject_id, event_type, attempt, event_id], queue=queue, countdown=countdown)
