"""The Celery workers of tone-platform land here with the job platform.

Today the worker image runs the engine CLI (``tone-platform``, :mod:`shared.cli`) instead.
"""
