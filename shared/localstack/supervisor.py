"""``tone-platform up`` / ``down``: the whole stack on one machine, without Docker.

``up`` uses the PostgreSQL and Redis named by ``DATABASE_URL`` / ``REDIS_URL`` when they are set in the
environment, else starts its own (``shared.localstack.servers``) under ``<data_dir>/postgres`` and
``<data_dir>/redis``; runs ``alembic upgrade head``; then starts the API (uvicorn serving
``api.main:app``), a Celery worker, beat and Flower (basic auth), each in its own session and process
group, with its output in ``<data_dir>/logs/<name>.log``.

Everything ``up`` started is recorded in ``<data_dir>/up.json`` (pids with their start times, URLs,
which servers it started), rewritten after each start, so that ``down`` -- or a failed ``up`` --
can stop exactly that and nothing else: each process group gets SIGTERM, then SIGKILL, and the
servers it started are stopped through their pidfiles. When ``up`` started its own servers it also
writes ``<data_dir>/env`` (``export DATABASE_URL=...`` lines, mode 0600), which ``tone-platform keys``
and ``db`` read when ``DATABASE_URL`` is not set.

In the foreground (the default) ``up`` supervises: a process that exits (crashed, killed) is
started again after a backoff (``RESTART_BACKOFF``: 1 s, 2 s, 5 s, ... 60 s; back to 1 s once it has
run ``STABLE_SECONDS``), with a log line; Ctrl-C or SIGTERM stops everything it started. With
``--detach`` the same supervisor runs in the background (its own session, output in
``<data_dir>/logs/up.log``), and ``up`` returns once ``GET /health`` answers 200 and the workers
answer, or fails (stopping what it started) with the logs' tails. ``down`` asks the supervisor to
stop its stack. A second ``up`` while a supervisor runs refuses ("already up"); when the supervisor
itself is gone (killed), it stops what is left of the stack and brings all of it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UP_FILE = "up.json"
ENV_FILE = "env"
FLOWER_PASSWORD_FILE = "flower-password"
HEALTH_TIMEOUT = 120.0
TERM_TIMEOUT = 20.0  # seconds a process group gets between SIGTERM and SIGKILL
NO_MODEL_HINT = (
    "no TONE_MODEL_PATH: the worker will try to download t-tech/T-one from Hugging Face (offline: "
    "`make models`, then TONE_MODEL_PATH=.cache/test-models/tones for the tones test model)"
)
CELERY_APP = "worker.celery_app:app"
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds before the n-th restart in a row
STABLE_SECONDS = 60.0  # a process that ran this long is restarted after the first delay again
UP_LOG = "up.log"
# the order of shutdown: the API stops taking work first, the worker finishes (warm shutdown) last
STOP_ORDER = ("api", "flower", "beat", "events", "worker-live", "worker")


class UpError(RuntimeError):
    """The stack could not be brought up or down; the message says why (with log tails)."""


# ------------------------------------------------------------------------------------- data dir env


def data_dir_from_env() -> Path:
    """The data directory as the settings see it (TONE_DATA_DIR, default ``.data``), absolute."""
    from shared.platform.settings import get_settings

    return Path(get_settings().data_dir).absolute()


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` pairs from a file of shell ``export KEY='VALUE'`` lines ({} when it is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key.isidentifier():
                values[key] = value
    return values


def load_data_dir_env() -> dict[str, str]:
    """Put ``<data_dir>/env`` (written by ``up`` when it started its own servers) into os.environ.

    Only the variables that are not set already are taken (an explicit DATABASE_URL always wins), and
    only when DATABASE_URL is unset. Returns what was applied; the settings cache is refreshed.
    """
    if os.environ.get("DATABASE_URL") or os.environ.get("TONE_DATABASE_URL"):
        return {}
    applied = {k: v for k, v in read_env_file(data_dir_from_env() / ENV_FILE).items() if k not in os.environ}
    if applied:
        os.environ.update(applied)
        from shared.platform.settings import get_settings

        get_settings.cache_clear()
    return applied


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def flower_password(data_dir: Path, configured: str | None) -> str:
    """TONE_FLOWER_PASSWORD, else the one in ``<data_dir>/flower-password`` (generated on first use)."""
    if configured:
        password = configured
    else:
        path = data_dir / FLOWER_PASSWORD_FILE
        try:
            password = path.read_text(encoding="utf-8").strip()
        except OSError:
            password = ""
        if not password:
            password = secrets.token_urlsafe(18)
            _write_private(path, password + "\n")
    if "," in password:
        raise UpError("TONE_FLOWER_PASSWORD must not contain ',' (Flower splits its credentials on commas)")
    return password


# ------------------------------------------------------------------------------------------ processes


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rfind(")") + 2 :].split()[19])
    except (IndexError, ValueError):
        return None


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in the process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass
class Child:
    """A process started by ``up``: the leader of its own session and process group."""

    name: str
    pid: int
    log: Path
    cmd: list[str]
    start_time: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pgid": self.pid,
            "start_time": self.start_time,
            "log": str(self.log),
            "cmd": self.cmd,
        }

    def exited(self) -> int | None:
        """The exit status when ``up`` is its parent and it has exited, else None."""
        return None if self.popen is None else self.popen.poll()


def spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Child:
    """Start ``cmd`` in a new session (its own process group, no terminal), output to logs/NAME.log."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        out.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} tone-platform up: {shlex.join(cmd)}\n".encode()
        )
        out.flush()
        popen = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: no Ctrl-C from our terminal, its own group to signal
            close_fds=True,
        )
    return Child(name, popen.pid, log, cmd, _proc_start_time(popen.pid), popen)


def _same_process(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` still names the process that was recorded (guards against recycled pids)."""
    if start_time is None:
        return True
    now = _proc_start_time(pid)
    return now is None or now == start_time


def _alive_as_recorded(pid: Any, start_time: Any) -> bool:
    """Whether ``pid`` runs and is the very process recorded with ``start_time``."""
    return isinstance(pid, int) and _running(pid) and _same_process(pid, start_time)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    from shared.localstack.servers import pid_alive

    return pid_alive(pid)


def stop_groups(entries: list[dict[str, Any]], timeout: float = TERM_TIMEOUT) -> list[str]:
    """SIGTERM every recorded process group, wait, SIGKILL what is left. Returns the names it stopped.

    A group whose leader is alive but is another process than the one recorded (a recycled pid) is
    left alone. A group whose leader exited may still hold its children (a worker's pool): it is
    signalled too, since its id cannot be reused while any member lives.
    """
    targets: list[tuple[str, int, subprocess.Popen[bytes] | None]] = []
    for entry in entries:
        pid = int(entry["pid"])
        pgid = int(entry.get("pgid", pid))
        leader_alive = _running(pid)
        if leader_alive and not _same_process(pid, entry.get("start_time")):
            continue
        if _group_alive(pgid):
            targets.append((str(entry.get("name", pid)), pgid, entry.get("popen")))
    for _, pgid, _ in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for sig_kill in (False, True):
        while time.monotonic() < deadline:
            for _, _, popen in targets:
                if popen is not None:
                    popen.poll()  # reap our own children so they don't linger as zombies
            if not any(_group_alive(pgid) for _, pgid, _ in targets):
                break
            time.sleep(0.1)
        if not sig_kill:
            for _, pgid, _ in targets:
                if _group_alive(pgid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
    for name, pgid, popen in targets:
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(1.0)
        if _group_alive(pgid):
            raise UpError(f"{name} (process group {pgid}) survived SIGTERM and SIGKILL")
    return [name for name, _, _ in targets]


# ------------------------------------------------------------------------------------------- health


def http_status(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    """(status, body head) of a GET; (None, reason) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = ""
        with contextlib.suppress(Exception):
            body = exc.read(2000).decode("utf-8", "replace")
        return int(exc.code), body
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _tail(path: Path, lines: int = 25) -> str:
    from shared.localstack.servers import log_tail

    return log_tail(path, lines)


# ---------------------------------------------------------------------------------------------- up


@dataclass
class Stack:
    """What one ``up`` started; saved to ``<data_dir>/up.json`` after every change."""

    data_dir: Path
    host: str
    port: int
    flower_port: int
    detached: bool
    supervisor_pid: int = field(default_factory=os.getpid)
    servers: dict[str, str] = field(default_factory=dict)  # name -> server data dir, those up started
    children: list[Child] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def up_file(self) -> Path:
        return self.data_dir / UP_FILE

    def save(self) -> None:
        doc = {
            "version": 1,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "supervisor_pid": None if self.detached else self.supervisor_pid,
            "supervisor_start_time": None if self.detached else _proc_start_time(self.supervisor_pid),
            "detached": self.detached,
            "host": self.host,
            "urls": self.urls,
            "servers": self.servers,
            "processes": {c.name: c.to_json() for c in self.children},
        }
        _write_private(self.up_file, json.dumps(doc, indent=2) + "\n")

    def stop(self) -> None:
        """Stop every process and server this ``up`` started, then forget them."""
        errors: list[str] = []
        order = {name: i for i, name in enumerate(STOP_ORDER)}
        entries = [
            {**c.to_json(), "name": c.name, "popen": c.popen}
            for c in sorted(self.children, key=lambda c: order.get(c.name, 99))
        ]
        try:
            stop_groups(entries)
        except UpError as exc:
            errors.append(str(exc))
        errors += _stop_servers(self.servers)
        self.up_file.unlink(missing_ok=True)
        if errors:
            raise UpError("; ".join(errors))


def _stop_servers(servers: dict[str, str]) -> list[str]:
    from shared.localstack import servers as stack

    errors = []
    for name in ("redis", "postgres"):
        where = servers.get(name)
        if where:
            try:
                stack.stop(Path(where))
            except stack.StackError as exc:
                errors.append(f"{name}: {exc}")
    return errors


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::", "*"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _check_port(host: str, port: int, what: str) -> None:
    from shared.localstack.servers import port_free

    bind = "0.0.0.0" if host in ("", "*") else host
    if not port_free(port, bind):
        raise UpError(f"port {port} on {bind} is in use: choose another one for {what}")


def _read_up(data_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((data_dir / UP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def stack_api_url(data_dir: Path | None = None) -> str | None:
    """The API URL of the ``up`` stack recorded in ``<data_dir>/up.json`` (TONE_DATA_DIR by default)."""
    doc = _read_up(data_dir or data_dir_from_env())
    url = ((doc or {}).get("urls") or {}).get("api")
    return url if isinstance(url, str) and url else None


def _recorded_alive(doc: dict[str, Any]) -> list[str]:
    """Names of the recorded processes (and a foreground supervisor) still running."""
    alive = []
    sup = doc.get("supervisor_pid")
    if _alive_as_recorded(sup, doc.get("supervisor_start_time")):
        alive.append(f"tone-platform up (pid {sup})")
    for name, entry in (doc.get("processes") or {}).items():
        pid = int(entry["pid"])
        if _alive_as_recorded(pid, entry.get("start_time")) or _group_alive(int(entry.get("pgid", pid))):
            alive.append(name)
    return alive


def _say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Planned:
    """One process of the stack: its name (and log file), its command line and its environment."""

    name: str
    cmd: list[str]
    env: dict[str, str]


def process_plan(
    env: dict[str, str],
    *,
    queue: str,
    host: str,
    port: int,
    flower_port: int,
    workers: int,
    data_dir: Path,
    flower_auth: str,
) -> list[Planned]:
    """The processes ``up`` starts, in order: the API, one Celery worker per role (a long batch never
    holds up live pieces or webhooks), beat and Flower. Pure: nothing is started here."""
    from shared.queue import EVENTS_QUEUE, live_queue

    py = sys.executable
    celery = [py, "-m", "celery", "-A", CELERY_APP]
    log = ["--loglevel", "INFO"]
    worker = [*celery, "worker", "-Q", queue, "-c", str(workers), "-n", f"{queue}-{port}@%h"]
    live = [*celery, "worker", "-Q", live_queue(queue), "-c", "1", "-n", f"{queue}-live-{port}@%h"]
    # no model: threads, no process per task
    events = [*celery, "worker", "-Q", EVENTS_QUEUE, "-P", "threads", "-c", "4", "-n", f"events-{port}@%h"]
    beat = [*celery, "beat", "-s", str(data_dir / "celerybeat-schedule")]
    # Flower with its /metrics and /healthcheck behind its basic auth too (shared/localstack/flower.py)
    flower = [
        py,
        "-m",
        "shared.localstack.flower",
        "-A",
        CELERY_APP,
        "flower",
        f"--address={host}",
        f"--port={flower_port}",
    ]
    return [
        Planned("api", [py, "-m", "api", "--host", host, "--port", str(port)], env),
        Planned("worker", [*worker, *log], env),
        # a live worker's ORT threads sleep between ops (the API and Redis share its cores) unless
        # the environment says otherwise
        Planned("worker-live", [*live, *log], {"TONE_ORT_SPINNING": "steps", **env}),
        Planned("events", [*events, *log], env),
        Planned("beat", [*beat, *log], env),
        # the password travels in FLOWER_BASIC_AUTH, never in argv
        Planned("flower", flower, dict(env, FLOWER_BASIC_AUTH=flower_auth)),
    ]


def _refuse_if_up(data_dir: Path) -> None:
    """An error when this data dir's stack runs under its supervisor. A stack whose supervisor is
    gone (killed) is stopped, what is left of it, so that this ``up`` brings all of it back; a
    stale record is cleaned up."""
    previous = _read_up(data_dir)
    if previous is None:
        return
    alive = _recorded_alive(previous)
    sup = previous.get("supervisor_pid")
    supervised = _alive_as_recorded(sup, previous.get("supervisor_start_time"))
    if alive and (supervised or previous.get("detached")):
        raise UpError(
            f"the stack of {data_dir} is already up ({', '.join(alive)}; {data_dir / UP_FILE}); its "
            f"supervisor restarts what crashes: run `tone-platform down` first to start it anew"
        )
    if alive:
        missing = sorted(set(previous.get("processes") or {}) - set(alive))
        _say(
            f"the supervisor of {data_dir}'s stack is gone; running: {', '.join(alive)}; missing: "
            f"{', '.join(missing) or 'none'}: stopping the rest and bringing the whole stack back"
        )
    _down_from(data_dir, previous, quiet=True)  # stop what is left (servers too), forget it


def _start_servers(current: Stack, data_dir: Path) -> tuple[str, str, bool]:
    """``(DATABASE_URL, REDIS_URL, wrote_env)``: the environment's servers, else local ones started
    (and recorded, so that a failure stops them); their URLs go to ``<data_dir>/env``."""
    from shared.localstack import servers as stack

    env_lines: list[str] = []
    db_url = os.environ.get("DATABASE_URL") or os.environ.get("TONE_DATABASE_URL")
    if db_url:
        _say("PostgreSQL: DATABASE_URL from the environment")
    else:
        _say(f"PostgreSQL: starting the local server in {data_dir / 'postgres'} ...")
        current.servers["postgres"] = str(data_dir / "postgres")
        current.save()
        db_url = stack.start_postgres(data_dir / "postgres").url
        env_lines.append(f"export DATABASE_URL={shlex.quote(db_url)}")
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("TONE_REDIS_URL")
    if redis_url:
        _say("Redis: REDIS_URL from the environment")
    else:
        _say(f"Redis: starting the local server in {data_dir / 'redis'} ...")
        current.servers["redis"] = str(data_dir / "redis")
        current.save()
        redis_url = stack.start_redis(data_dir / "redis", password=_redis_password(data_dir / "redis")).url
        env_lines.append(f"export REDIS_URL={shlex.quote(redis_url)}")
    env_file = data_dir / ENV_FILE
    if env_lines:
        header = "# written by `tone-platform up`: the servers it started (read by `tone-platform keys`)"
        _write_private(env_file, "\n".join([header, *env_lines]) + "\n")
    else:
        env_file.unlink(missing_ok=True)
    return db_url, redis_url, bool(env_lines)


def _migrate(env: dict[str, str], logs: Path) -> None:
    _say("Database: alembic upgrade head ...")
    migrate_log = logs / "migrate.log"
    with open(migrate_log, "ab") as out:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli.main", "db", "upgrade", "head"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        raise UpError(
            f"alembic upgrade head failed (exit status {done.returncode}):\n"
            f"--- last lines of {migrate_log} ---\n{_tail(migrate_log)}"
        )


def _banner(current: Stack, settings: Any, host: str, password: str, key_hint: str) -> None:
    api_url, flower_url = current.urls["api"], current.urls["flower"]
    logs = current.data_dir / "logs"
    _say()
    _say(f"  API      {api_url}  (docs: {api_url}/docs, health: {api_url}/health)")
    _say(f"  console  {api_url}/console  (sign in with an API key)")
    if host in ("0.0.0.0", "::"):
        _say(f"           listening on all interfaces ({host})")
    _say(f"  Flower   {flower_url}  (user {settings.flower_user!r}, password {password!r})")
    _say(f"  logs     {logs}/{{api,worker,worker-live,events,beat,flower,migrate}}.log")
    _say(f"  state    {current.up_file}")
    if settings.auth_disabled:
        _say("  WARNING  TONE_AUTH_DISABLED=1: no API key is checked, every caller acts as the tenant")
        _say("           'local' (console included): never expose this stack beyond this machine")
    if not settings.model_path:
        _say(f"  note     {NO_MODEL_HINT}")
    else:
        _say(f"  model    {settings.model_path}")
    _say(key_hint)
    _say()


def up(
    *,
    detach: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    flower_port: int = 5555,
    workers: int = 1,
    health_timeout: float = HEALTH_TIMEOUT,
    background: bool = False,
) -> int:
    """Start the servers (or use the environment's), migrate, start every process of
    :func:`process_plan`; foreground: supervise until Ctrl-C, detached: return once healthy.
    ``background``: this is the supervisor ``--detach`` started (no terminal: ``down`` stops it)."""
    from shared.localstack import servers as stack
    from shared.platform.settings import get_settings

    settings = get_settings()
    data_dir = Path(settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    _refuse_if_up(data_dir)
    _check_port(host, port, "the API (--port)")
    _check_port(host, flower_port, "Flower (--flower-port)")
    if workers < 1:
        raise UpError("--workers must be at least 1")
    if detach:
        return _up_in_background(data_dir, host, port, flower_port, workers, health_timeout)
    password = flower_password(data_dir, settings.flower_password)

    current = Stack(data_dir, host, port, flower_port, detach)
    previous_term: Any = None
    if not detach:

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous_term = signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        db_url, redis_url, wrote_env = _start_servers(current, data_dir)
        env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, TONE_DATA_DIR=str(data_dir))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("TONE_DATABASE_URL", None)
        env.pop("TONE_REDIS_URL", None)
        _migrate(env, logs)

        api_url = f"http://{_display_host(host)}:{port}"
        health_url = f"http://{stack._url_host(host)}:{port}/health"
        current.urls = {
            "api": api_url,
            "docs": f"{api_url}/docs",
            "health": health_url,
            "flower": f"http://{_display_host(host)}:{flower_port}",
        }
        plan = process_plan(
            env,
            queue=settings.worker_queue,
            host=host,
            port=port,
            flower_port=flower_port,
            workers=workers,
            data_dir=data_dir,
            flower_auth=f"{settings.flower_user}:{password}",
        )
        for planned in plan:
            current.children.append(spawn(planned.name, planned.cmd, planned.env, logs))
            current.save()
        _banner(current, settings, host, password, _key_hint(data_dir, wrote_env, db_url))

        stop_hint = "`tone-platform down` stops everything" if background else "Ctrl-C stops everything"
        return _supervise(current, health_url, health_timeout, {p.name: p for p in plan}, logs, stop_hint)
    except KeyboardInterrupt:
        _say("\nstopping ...")
        return 130
    finally:
        if not ok:  # a failure, a foreground stop or Ctrl-C: stop what this up started
            with _signals_ignored():
                try:
                    current.stop()
                    if current.children or current.servers:
                        _say("stopped everything `tone-platform up` started.")
                except UpError as exc:
                    print(f"tone-platform: {exc}", file=sys.stderr)
        if not detach:
            signal.signal(signal.SIGTERM, previous_term)


def _redis_password(redis_dir: Path) -> str:
    """The password of the local Redis: the one it already has (stack.json), or a new one."""
    try:
        saved = json.loads((redis_dir / "stack.json").read_text()).get("password")
    except (OSError, ValueError, AttributeError):
        saved = None
    return saved if isinstance(saved, str) and saved else secrets.token_hex(16)


def _key_hint(data_dir: Path, wrote_env: bool, db_url: str) -> str:
    lines = ["  API keys tone-platform keys create --tenant NAME   (prints the key; then send it as"]
    lines.append("           `Authorization: Bearer KEY` or `X-API-Key: KEY`)")
    if wrote_env:
        where = "" if os.environ.get("TONE_DATA_DIR") is None else f"TONE_DATA_DIR={data_dir} "
        lines.append(
            f"           {where}tone-platform keys ... finds this database through {data_dir / ENV_FILE}"
        )
        lines.append(f"           (or: source {data_dir / ENV_FILE})")
    else:
        lines.append("           with the same DATABASE_URL in the environment")
    return "\n".join(lines)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Teardown is bounded; a second Ctrl-C must not leave half of the stack running."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _workers_in(body: str) -> int | None:
    """The ``workers`` count of a /health answer (None when it has none). An anonymous /health
    shows only its status: "ok" means every role has a worker reading its queue (at least one)."""
    try:
        answer = json.loads(body)
        workers = answer.get("workers")
    except (ValueError, AttributeError):
        return None
    if workers is None and answer.get("status") in ("ok", "degraded"):
        return 1 if answer["status"] == "ok" else 0
    return workers if isinstance(workers, int) else None


def _model_warning(body: str) -> str | None:
    """A warning line when a /health answer says the model is missing or failed to load."""
    try:
        health = json.loads(body)
    except ValueError:
        return None
    if not isinstance(health, dict) or health.get("model_status", "ok") == "ok":
        return None
    return f"warning: {health.get('status', 'degraded')}: every job will fail: {health.get('model_error')}"


def _say_ready(health_url: str, then: str) -> None:
    status, body = http_status(health_url, timeout=2.0)
    warning = _model_warning(body) if status == 200 else None
    state = "degraded (no model)" if warning else "ready"
    _say(f"{state}: {health_url} answers 200. {then}")
    if warning:
        _say(warning)


def _up_in_background(
    data_dir: Path, host: str, port: int, flower_port: int, workers: int, timeout: float
) -> int:
    """``up --detach``: the supervising ``up`` in a session of its own (output in logs/up.log);
    return once its stack is healthy and its workers answer, else stop it and fail with the tails."""
    from shared.localstack import servers as stack

    log = data_dir / "logs" / UP_LOG
    cmd = [sys.executable, "-m", "shared.cli.main", "up", "--host", host, "--port", str(port),
           "--flower-port", str(flower_port), "--workers", str(workers),
           "--timeout", str(timeout), "--background"]  # fmt: skip
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        supervisor = subprocess.Popen(
            cmd,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    health_url = f"http://{stack._url_host(host)}:{port}/health"
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline and supervisor.poll() is None:
        status, body = http_status(health_url)
        if status == 200 and (_workers_in(body) or 0) >= 1:
            break
        time.sleep(0.5)
    said = _log_since(log, start)
    print(said, end="" if said.endswith("\n") else "\n", flush=True)
    if supervisor.poll() is not None:
        raise UpError(f"the stack's supervisor exited with status {supervisor.returncode} (see {log})")
    if (_workers_in(body) or 0) < 1:
        healthy = http_status(health_url)[0] == 200
        if not healthy:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(supervisor.pid, signal.SIGTERM)  # it stops everything it started
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.wait(TERM_TIMEOUT + 40)
            raise UpError(
                f"{health_url} did not answer 200 within {timeout:.0f} s; see {log}:\n{_tail(log, 25)}"
            )
        _say(f"warning: no worker is ready yet; jobs wait queued. See {data_dir / 'logs'}")
    _say(f"ready: {health_url} answers 200; supervised by pid {supervisor.pid} (crashed processes are")
    _say("restarted). `tone-platform down` stops the stack.")
    return 0


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _restart(current: Stack, index: int, planned: Planned, logs: Path) -> Child:
    """Start a crashed child again (what is left of its process group is killed first)."""
    old = current.children[index]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(old.pid, signal.SIGKILL)
    if old.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.popen.wait(1.0)
    child = spawn(planned.name, planned.cmd, planned.env, logs)
    current.children[index] = child
    current.save()
    return child


def _supervise(
    current: Stack,
    health_url: str,
    timeout: float,
    plan: dict[str, Planned],
    logs: Path,
    stop_hint: str = "Ctrl-C stops everything",
) -> int:
    """Say when /health is ready; restart every process that exits, after a backoff, with a log
    line (a crash loop waits up to a minute between tries). Runs until Ctrl-C or SIGTERM."""
    deadline = time.monotonic() + timeout
    ready = False
    last = ""
    failures: dict[str, int] = {}
    started: dict[str, float] = {c.name: time.monotonic() for c in current.children}
    due: dict[str, float] = {}
    _say(f"waiting for /health ... ({stop_hint})")
    while True:
        if not ready:
            status, body = http_status(health_url, timeout=2.0)
            if status == 200:
                ready = True
                _say_ready(health_url, f"{stop_hint}.")
            else:
                last = f"{status} {body.strip()[:300]}" if status is not None else body
                if time.monotonic() > deadline:
                    ready = True  # stop polling; keep running, the user can look at the logs
                    _say(f"warning: {health_url} is not ready after {timeout:.0f} s (last answer: {last})")
        for index, child in enumerate(current.children):
            name = child.name
            code = child.exited()
            if code is None:
                if time.monotonic() - started.get(name, 0.0) > STABLE_SECONDS:
                    failures.pop(name, None)
                continue
            if name not in due:
                n = failures.get(name, 0)
                delay = RESTART_BACKOFF[min(n, len(RESTART_BACKOFF) - 1)]
                failures[name] = n + 1
                due[name] = time.monotonic() + delay
                print(
                    f"tone-platform: {name} exited with status {code}; restarting it in {delay:.0f} s "
                    f"(restart {n + 1} in a row); last lines of {child.log}:\n{_tail(child.log, 15)}",
                    file=sys.stderr,
                    flush=True,
                )
            elif time.monotonic() >= due[name] and name in plan:
                del due[name]
                new = _restart(current, index, plan[name], logs)
                started[name] = time.monotonic()
                print(f"tone-platform: restarted {name} (pid {new.pid})", file=sys.stderr, flush=True)
        time.sleep(0.5)


# -------------------------------------------------------------------------------------------- down


def _down_from(data_dir: Path, doc: dict[str, Any], *, quiet: bool = False) -> list[str]:
    """Stop what an up.json records; returns the names of what it found running."""
    errors: list[str] = []
    stopped: list[str] = []
    sup = doc.get("supervisor_pid")
    if (
        isinstance(sup, int)
        and _alive_as_recorded(sup, doc.get("supervisor_start_time"))
        and sup != os.getpid()
    ):
        # a foreground `up`: ask it to stop its stack itself, then make sure below
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + TERM_TIMEOUT + 40
        while time.monotonic() < deadline and _running(sup):
            time.sleep(0.2)
        stopped.append("tone-platform up")
    processes = doc.get("processes") or {}
    order = {name: i for i, name in enumerate(STOP_ORDER)}
    entries = [
        {**entry, "name": name}
        for name, entry in sorted(processes.items(), key=lambda kv: order.get(kv[0], 99))
    ]
    try:
        stopped += stop_groups(entries)
    except UpError as exc:
        errors.append(str(exc))
    for name in ("redis", "postgres"):
        where = (doc.get("servers") or {}).get(name)
        if where and _server_running(name, Path(where)):
            stopped.append(name)
    errors += _stop_servers(doc.get("servers") or {})
    if errors:
        raise UpError("; ".join(errors))
    (data_dir / UP_FILE).unlink(missing_ok=True)
    # it named the servers just stopped: left behind, `keys`, a hand-run `celery -A worker...` and a
    # test run in this checkout would all take its dead DATABASE_URL and REDIS_URL
    (data_dir / ENV_FILE).unlink(missing_ok=True)
    if not quiet and stopped:
        _say(f"stopped: {', '.join(stopped)}")
    return stopped


def _server_running(name: str, where: Path) -> bool:
    from shared.localstack import servers as stack

    if name == "postgres":
        return stack._pg_pidfile_info(where / "pgdata") is not None
    return stack._redis_pid(where) is not None


def down() -> int:
    data_dir = data_dir_from_env()
    doc = _read_up(data_dir)
    if doc is None:
        _say(f"nothing to stop: no {data_dir / UP_FILE} (the stack of {data_dir} is not up)")
        return 0
    stopped = _down_from(data_dir, doc)
    if not stopped:
        _say("nothing was running; forgot the stale record")
    return 0
