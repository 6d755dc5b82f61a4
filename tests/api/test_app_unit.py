"""How the application is put together, checked without a server."""

from __future__ import annotations

import os

import pytest

from api.main import create_app, telemetry


def test_fastapi_telemetry_is_off_unless_the_environment_sets_opentelemetry_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    assert telemetry() == {"tracing": False, "metrics": False, "logs": False}
    assert not create_app()._native_telemetry.enabled()  # no per-request provider lookup
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert telemetry() is None  # FastAPI's defaults: traces, metrics and logs to the providers
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    assert telemetry() is None
