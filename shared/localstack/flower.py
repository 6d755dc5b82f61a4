"""Flower with ALL of its pages behind its basic auth: ``python -m shared.localstack.flower -A APP
flower ...`` (the arguments of ``celery``).

Flower 2.2 serves ``/metrics`` (worker hostnames, task names and counts) and ``/healthcheck``
without authentication even when basic auth is on (mher/flower#1342, the change of #1129; no
option turns it back on). Here both handlers get Tornado's ``authenticated`` check, the one every
other Flower page uses, so they answer 401 without the credentials. Flower's own code is
otherwise unchanged.
"""

from __future__ import annotations

import sys
from typing import Any


def protect() -> None:
    """Wrap the GET of Flower's metrics and healthcheck handlers in ``tornado.web.authenticated``."""
    import tornado.web
    from flower.views import monitor

    for handler in (monitor.Metrics, monitor.Healthcheck):
        get: Any = handler.get
        if not getattr(get, "_tone_protected", False):
            wrapped: Any = tornado.web.authenticated(get)
            wrapped._tone_protected = True
            handler.get = wrapped


def main() -> None:
    protect()
    from celery.__main__ import main as celery_main

    sys.argv[0] = "celery"
    celery_main()


if __name__ == "__main__":
    main()
