"""What an anonymous caller learns (issue 16, item 13), against real processes: public /health
says only up/degraded/unavailable (details with a key or the scrape token, and the model by name,
never its path); wrong keys are rate-limited per client address; Flower's /metrics and
/healthcheck need its basic auth like every other Flower page."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_api import assert_error, auth
from tests.conftest import BIN, Proc, _spawn, free_port, start_api, wait_for

TOKEN = "scrape-" + "x" * 24
FAILURES = 5


@pytest.fixture(scope="module")
def guarded_api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    env = {**platform_env, "TONE_SCRAPE_TOKEN": TOKEN, "TONE_AUTH_FAILURES_PER_MINUTE": str(FAILURES)}
    proc = start_api(env, logs, "api-guarded")
    yield proc
    proc.stop()


def test_anonymous_health_says_only_its_status(
    guarded_api: Proc, api_key: str, platform_env: dict[str, str]
) -> None:
    anonymous = httpx.get(f"{guarded_api.url}/health", timeout=10)
    assert anonymous.status_code == 200
    assert set(anonymous.json()) == {"status"} and anonymous.json()["status"] in ("ok", "degraded")
    assert platform_env["TONE_MODEL_PATH"] not in anonymous.text
    wrong = httpx.get(f"{guarded_api.url}/health", headers=auth("tone_nope_" + "y" * 30), timeout=10)
    assert set(wrong.json()) == {"status"}
    for headers in (auth(api_key), auth(TOKEN), {"X-API-Key": TOKEN}):
        detailed = httpx.get(f"{guarded_api.url}/health", headers=headers, timeout=10).json()
        assert {"status", "model", "database", "broker", "workers", "queues"} <= set(detailed), detailed
        model = Path(platform_env["TONE_MODEL_PATH"])
        assert detailed["database"] == "ok" and detailed["model"] in (model.name, model.parent.name)
        assert platform_env["TONE_MODEL_PATH"] not in str(detailed)


def test_wrong_keys_are_rate_limited_per_client_address(guarded_api: Proc, api_key: str) -> None:
    address = f"203.0.113.{random.randint(1, 254)}"  # uvicorn trusts X-Forwarded-For from loopback
    other = f"198.51.100.{random.randint(1, 254)}"
    url = f"{guarded_api.url}/v1/jobs"

    def call(key: str, where: str) -> httpx.Response:
        return httpx.get(url, headers={**auth(key), "X-Forwarded-For": where}, timeout=10)

    for n in range(FAILURES):
        assert_error(call(f"tone_wrong{n:03}_" + "z" * 30, address), 401, "unauthorized")
    refused = call("tone_wrongnext_" + "z" * 30, address)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert call(api_key, address).status_code == 429  # the address is refused before any key lookup
    assert call(api_key, other).status_code == 200  # other addresses are not
    assert_error(call("tone_wrongother_" + "z" * 30, other), 401, "unauthorized")


@pytest.fixture(scope="module")
def flower(platform_env: dict[str, str], logs: Path) -> Iterator[str]:
    port = free_port()
    cmd = [str(BIN / "python"), "-m", "shared.localstack.flower", "-A", "worker.celery_app:app", "flower",
           "--address=127.0.0.1", f"--port={port}"]  # fmt: skip
    log = logs / "flower-auth.log"
    proc = Proc(_spawn(cmd, {**platform_env, "FLOWER_BASIC_AUTH": "admin:s3cret"}, log), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/", timeout=2).status_code == 401, "flower", proc, 60)
        yield url
    finally:
        proc.stop()


@pytest.mark.parametrize("path", ["/metrics", "/healthcheck", "/", "/api/workers"])
def test_every_flower_page_needs_its_basic_auth(flower: str, path: str) -> None:
    assert httpx.get(f"{flower}{path}", timeout=10).status_code == 401
    assert httpx.get(f"{flower}{path}", auth=("admin", "wrong"), timeout=10).status_code == 401
    assert httpx.get(f"{flower}{path}", auth=("admin", "s3cret"), timeout=30).status_code == 200
