"""Session fixtures: test models built by the project's own code; real Postgres, Redis, API and workers."""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT_AUDIO = ROOT.parent / "shared" / "audio"
CACHE = Path(os.environ.get("TONE_TEST_CACHE", ROOT / ".cache" / "test-models"))
# the test process never reads this checkout's own `tone-platform up` stack (its .data/env names
# servers that `make run` started, which a test would otherwise connect to)
os.environ["TONE_DATA_DIR"] = tempfile.mkdtemp(prefix="tone-test-data-")


@pytest.fixture(scope="session")
def tone_model() -> Path:
    """The recognizing test model (tones in, letters out, 0.33 s delay through state)."""
    from shared.dev.models.tones import build_tone_model

    return build_tone_model(CACHE / "tones")


@pytest.fixture(scope="session")
def recognizer(tone_model: Path):
    from shared.asr.engine import Recognizer

    return Recognizer.load(tone_model, threads=1)


@pytest.fixture(scope="session")
def cost_model() -> Path:
    """The cost-faithful model (T-one's compute, random float16 weights), cached between runs."""
    from shared.dev.models.cost import build_cost_model

    path = CACHE / "cost" / "model.onnx"
    if not path.is_file():
        build_cost_model(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# -- the platform: real Postgres, Redis, API server and Celery workers --------------------------------


BIN = Path(sys.executable).parent


@dataclass
class Proc:
    """A platform process started by the tests, with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = 15, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )


def wait_for(check: Callable[[], bool], what: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout} s" + (f":\n{proc.tail()}" if proc else ""))


def start_api(env: dict[str, str], logs: Path, name: str = "api") -> Proc:
    """The real HTTP server (uvicorn serving api.main:app) on a free loopback port."""
    import httpx

    port = free_port()
    cmd = [str(BIN / "python"), "-m", "api", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    proc = Proc(_spawn(cmd, env, logs / f"{name}.log"), logs / f"{name}.log", f"http://127.0.0.1:{port}")
    wait_for(lambda: httpx.get(f"{proc.url}/", timeout=2).status_code < 500, "API server", proc)
    return proc


def start_worker(
    env: dict[str, str],
    logs: Path,
    name: str = "worker",
    queues: str = "cpu,cpu.live,events",
    concurrency: int = 1,
    pool: str = "prefork",
) -> Proc:
    """A real Celery worker (prefork, model loaded once per process) consuming ``queues`` (by default
    all of the ``cpu`` roles: transcription, live pieces, events); ``pool="threads"`` as the stack's
    events worker runs."""
    log = logs / f"{name}.log"
    cmd = [str(BIN / "celery"), "-A", "worker.celery_app:app", "worker", "-Q", queues, "-P", pool,
           "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
           "--without-mingle"]  # fmt: skip
    proc = Proc(_spawn(cmd, env, log), log)
    wait_for(lambda: " ready." in log.read_text(errors="replace"), f"worker {name}", proc, timeout=90)
    return proc


def start_beat(env: dict[str, str], logs: Path, root: Path) -> Proc:
    log = logs / "beat.log"
    cmd = [str(BIN / "celery"), "-A", "worker.celery_app:app", "beat", "--loglevel", "INFO",
           "-s", str(root / "beat-schedule")]  # fmt: skip
    return Proc(_spawn(cmd, env, log), log)


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, str]]:
    """Real PostgreSQL and Redis (shared.localstack), the schema migrated to head; stopped at the end."""
    from shared.db.migrate import alembic_upgrade
    from shared.localstack import servers as stack

    # not pytest's tmp dirs: they are 0700, and as root the servers run as the user "tone"
    root = Path(tempfile.mkdtemp(prefix="tone-platform-test-"))
    root.chmod(0o755)
    pg = rd = None
    try:
        pg = stack.start_postgres(root / "postgres")
        rd = stack.start_redis(root / "redis")
        alembic_upgrade(pg.url)
        yield {"DATABASE_URL": pg.url, "REDIS_URL": rd.url, "root": str(root)}
    finally:
        for service in (pg, rd):
            if service is not None:
                stack.stop(service)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def platform_env(servers: dict[str, str], tone_model: Path) -> dict[str, str]:
    """The environment every platform process of the tests runs with."""
    root = Path(servers["root"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONE_")}
    env.update(
        DATABASE_URL=servers["DATABASE_URL"],
        REDIS_URL=servers["REDIS_URL"],
        TONE_MODEL_PATH=str(tone_model),
        TONE_DATA_DIR=str(root / "data"),
        TONE_THREADS="1",
        TONE_ALLOW_PRIVATE_URLS="1",  # the tests' webhook receivers and audio servers are on loopback
        TONE_JOB_LEASE_SECONDS="20",
        TONE_QUEUED_GRACE_SECONDS="20",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def logs(servers: dict[str, str]) -> Path:
    path = Path(servers["root"]) / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def api(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_api(platform_env, logs)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def worker(platform_env: dict[str, str], logs: Path) -> Iterator[Proc]:
    proc = start_worker(platform_env, logs)
    yield proc
    proc.stop()


def make_key(servers: dict[str, str], tenant: str) -> str:
    from shared.db.session import session_scope
    from shared.platform.keys import create_key

    with session_scope(servers["DATABASE_URL"]) as session:
        return create_key(session, tenant)[1]


@pytest.fixture(scope="session")
def api_key(servers: dict[str, str]) -> str:
    """A key of tenant "tenant-a"."""
    return make_key(servers, "tenant-a")


@pytest.fixture(scope="session")
def other_key(servers: dict[str, str]) -> str:
    """A key of tenant "tenant-b"."""
    return make_key(servers, "tenant-b")


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    """Run a test's HTTP server (bound to 127.0.0.1) in a thread; shut it down afterwards."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- a stereo call for the consoles' tests -------------------------------------------------------------

CALL_AGENT = ["привет мир", "до свидания"]
CALL_CLIENT = ["как дела"]


@pytest.fixture(scope="module")
def call_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split-stereo call (the consoles' tests): the agent on the left, the client on the right, at other
    times."""
    import soundfile as sf

    from shared.dev.models.tones import synthesize

    agent = synthesize(CALL_AGENT, lead=0.6, pause=2.4)[0]
    client = synthesize(CALL_CLIENT, lead=2.1)[0]
    audio = np.zeros((max(len(agent), len(client)), 2), np.int16)
    audio[: len(agent), 0] = agent
    audio[: len(client), 1] = client
    path = tmp_path_factory.mktemp("call") / "call-0001.wav"
    sf.write(path, audio, 8000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def call_phrases(call_wav: Path, recognizer: Any) -> list[dict[str, Any]]:
    phrases = [p.to_dict() for p in recognizer.transcribe_file(call_wav, channels="split").phrases]
    assert {p["channel"] for p in phrases} == {0, 1} and len(phrases) == 3, phrases
    return sorted(phrases, key=lambda p: (p["start_time"], p["channel"]))


# -- markers: `pytest -m "not platform and not browser"` is the fast loop (README, Testing) ------------

# tests that start real servers without the `servers` fixture (their own stack or `tone-platform up`)
_OWN_SERVERS = ("tests/tools/test_stack.py", "tests/tools/test_up.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if where.startswith("tests/console/"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.platform)
        elif "servers" in getattr(item, "fixturenames", ()) or where in _OWN_SERVERS:
            item.add_marker(pytest.mark.platform)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A multiprocessing child a test left running would keep pytest from exiting (multiprocessing
    joins its children at exit) until CI's limit: it is ended here, and said (the test that hung
    on it has failed on its own timeout)."""
    import multiprocessing

    left = multiprocessing.active_children()
    for child in left:
        child.terminate()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
    if left:
        print(f"\nconftest: ended {len(left)} multiprocessing child(ren) left running: {left}")


def written(phrases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine's phrases as the platform stores them by default: with ``display`` and
    ``display_words`` (normalize on, nothing redacted)."""
    from shared.text.display import display_phrases
    from shared.text.options import TextOptions

    return display_phrases(phrases, TextOptions())[0]
