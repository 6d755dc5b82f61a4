"""The Celery workers of tone-platform.

- :mod:`worker.celery_app`: the Celery app and every reliability setting; ``enqueue_*`` helpers.
- :mod:`worker.tasks`: ``tone.transcribe`` (claim a job, batch in other waiting jobs of its queue,
  transcribe, store) and the beat's ``tone.requeue_stuck`` (re-send lost messages and jobs whose
  worker's lease expired; fail ``worker_lost`` after three lost workers).
- :mod:`worker.jobs`: one task run: download ``audio_url``, open audio, progress, leases, cancels,
  outcomes and webhooks, logs with the job id on every line.
- :mod:`worker.store`: the lease-guarded writes to the jobs table (only the lease owner writes).
- :mod:`worker.processing`: many recordings advanced together through the engine's batched
  stepping (no DB, no Celery).
- :mod:`worker.webhooks`: the ``tone.webhook`` task.

The model loads once per worker process (``TONE_MODEL_PATH``, ``TONE_PROVIDER``, ``TONE_THREADS``,
``TONE_PRECISION``, ``TONE_DECODER``). A GPU worker is a setting, not a code change:
``celery -A worker.celery_app:app worker -Q gpu`` with ``TONE_PROVIDER=cuda`` (onnxruntime-gpu).
"""
