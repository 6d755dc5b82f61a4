"""The workers' Celery application: the task contract of :mod:`shared.queue` plus the task modules
and the ONE beat schedule. Only worker processes import this module (``celery -A worker.celery_app``).

Beat re-sends jobs whose message was lost or whose worker's lease expired (``tone.requeue_stuck``),
sends webhook attempts that fell due (``tone.webhook_due``) and applies retention (``tone.retention``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from shared.queue import (
    EVENTS_QUEUE,
    REQUEUE_TASK,
    RETENTION_TASK,
    WEBHOOK_DUE_TASK,
    make_app,
    worker_transport,
)

TASK_MODULES = ["worker.tasks", "worker.webhooks", "worker.streaming", "worker.retention"]

# seconds between runs of each periodic task; all of them run on the events queue
REQUEUE_INTERVAL_SECONDS = 5.0  # also finds dead lease holders (worker.liveness)
WEBHOOK_DUE_INTERVAL_SECONDS = 30.0
RETENTION_INTERVAL_SECONDS = 600.0


def beat_schedule() -> dict[str, dict[str, object]]:
    every = {
        "requeue-stuck-jobs": (REQUEUE_TASK, REQUEUE_INTERVAL_SECONDS),
        "webhook-due": (WEBHOOK_DUE_TASK, WEBHOOK_DUE_INTERVAL_SECONDS),
        "retention": (RETENTION_TASK, RETENTION_INTERVAL_SECONDS),
    }
    return {
        name: {"task": task, "schedule": seconds, "options": {"queue": EVENTS_QUEUE}}
        for name, (task, seconds) in every.items()
    }


def make_worker_app() -> Celery:
    # `celery -A worker.celery_app inspect ...` by hand finds the `tone-platform up` stack's broker
    # the way `keys` does: <TONE_DATA_DIR>/env, when DATABASE_URL is unset (the stack's own processes
    # have it set, so for them this is a no-op)
    from shared.localstack.supervisor import load_data_dir_env

    load_data_dir_env()
    app = make_app(include=TASK_MODULES)
    app.conf.beat_schedule = beat_schedule()
    return app


app = make_worker_app()


@celeryd_init.connect
def _worker_transport(conf: Any = None, **_: Any) -> None:
    """A worker (not beat, Flower or ``celery inspect``) survives a Redis restart with tasks in
    flight: its broker connections keep their parameters (``shared.queue.BrokerTransport``)."""
    if conf is None or conf.broker_transport:
        return
    transport = worker_transport(str(conf.broker_url or ""))
    if transport is not None:
        from kombu.connection import Connection

        conf.broker_transport = transport
        # its URL still reads redis://... ("Connected to ...", `celery inspect stats`)
        Connection.resolve_aliases = {**Connection.resolve_aliases, transport: "redis"}
