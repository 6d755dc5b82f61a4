"""The SSRF guard: URL checks, address classes, connecting to the checked address, downloads.

Every server here listens on 127.0.0.1 only; public addresses are only ever *checked*, never
connected to.
"""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.platform import netguard
from shared.platform.netguard import UrlError, check_url, download, post_json
from tests.conftest import free_port, serving

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        port = self.server.server_address[1]
        if self.path == "/file.wav":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/chunked":  # no Content-Length: the limit must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(4):
                self.wfile.write(PAYLOAD)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/file.wav")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-away":  # to an address that the (patched) guard forbids
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{port}/file.wav")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/hook":
            self.send_response(204)
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    do_GET = _answer  # noqa: N815
    do_POST = _answer  # noqa: N815


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []


@pytest.fixture
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


def _port(srv: _Server) -> int:
    return int(srv.server_address[1])


# -- check_url ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://",
        "https:///path",
        "http://user:secret@example.com/hook",
        "http://user@example.com/hook",
        "not a url",
    ],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(UrlError) as info:
        check_url(url, allow_private=False)
    assert info.value.code == "invalid_url"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "2130706433",  # 127.0.0.1 written as one number: resolved, then refused
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[::ffff:a9fe:a9fe]",  # IPv4-mapped 169.254.169.254
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
        "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_forbidden(host: str) -> None:
    with pytest.raises(UrlError) as info:
        check_url(f"http://{host}:8080/hook", allow_private=False)
    assert info.value.code == "url_forbidden"
    assert "not a public address" in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",
        "https://93.184.216.34:8443/hook?x=1",
        "https://[2606:4700:4700::1111]/hook",
        "http://[::ffff:93.184.216.34]/hook",  # IPv4-mapped form of a public address
        "http://[2002:5db8:d822::1]/hook",  # 6to4 form of a public address
    ],
)
def test_public_literals_pass_the_check(url: str) -> None:
    check_url(url, allow_private=False)  # only checked: nothing connects to these


def test_names_are_resolved_and_checked() -> None:
    with pytest.raises(UrlError) as info:
        check_url("http://localhost:9/hook", allow_private=False)
    assert info.value.code == "url_forbidden"
    assert "localhost" in info.value.message


def test_allow_private_lets_loopback_through() -> None:
    check_url("http://127.0.0.1:9/hook", allow_private=True)
    check_url("http://localhost:9/hook", allow_private=True)
    check_url("http://[::1]:9/hook", allow_private=True)


def test_unresolvable_host_is_invalid() -> None:
    with pytest.raises(UrlError) as info:
        check_url("http://no-such-host.invalid/hook", allow_private=False)
    assert info.value.code == "invalid_url"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> dict[str, int]:
    """Make getaddrinfo answer ``answers[name][n]`` on its n-th call for ``name`` (the last one
    repeats); other names resolve for real. Returns the call counts."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        n = calls.get(host, 0)
        calls[host] = n + 1
        result = []
        for address in answers[host][min(n, len(answers[host]) - 1)]:
            if ipaddress.ip_address(address).version == 6:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port or 0), 0, 0)))
            else:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0))))
        return result

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def test_any_forbidden_address_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"mixed.test": [["93.184.216.34", "127.0.0.1"]], "ok.test": [["93.184.216.34"]]})
    with pytest.raises(UrlError) as info:
        check_url("https://mixed.test/hook", allow_private=False)
    assert info.value.code == "url_forbidden"
    assert "127.0.0.1" in info.value.message
    check_url("https://ok.test/hook", allow_private=False)


def test_https_targets_keep_the_name_for_host_and_sni(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"hooks.example.com": [["93.184.216.34"]]})
    target = netguard.resolve("https://hooks.example.com:8443/a/b?c=d#frag", allow_private=False)
    assert target.addresses == ("93.184.216.34",)
    assert target.host_header == "hooks.example.com:8443"
    assert target.sni == "hooks.example.com"
    assert str(target.url_for("93.184.216.34")) == "https://93.184.216.34:8443/a/b?c=d"
    literal = netguard.resolve("https://93.184.216.34/x", allow_private=False)
    assert literal.sni is None  # an IP literal is verified as itself


# -- the address actually connected to ------------------------------------------------------------------


def test_connects_to_the_checked_address_not_a_second_lookup(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers 127.0.0.1 (checked, allowed here) and then an address that
    nothing may reach. The request must go to the checked address, resolving the name once."""
    calls = _fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["203.0.113.7"]]})
    connected: list[Any] = []
    real_connect = socket.create_connection

    def recording_connect(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording_connect)
    port = _port(server)
    status, _headers, elapsed_ms = post_json(
        f"http://rebind.test:{port}/hook", b'{"a":1}', {"X-Test": "1"}, timeout=5, allow_private=True
    )
    assert status == 204
    assert elapsed_ms > 0
    assert calls["rebind.test"] == 1
    assert [tuple(a)[:2] for a in connected] == [("127.0.0.1", port)]
    method, path, headers, body = server.requests[-1]
    assert (method, path, body) == ("POST", "/hook", b'{"a":1}')
    assert headers["Host"] == f"rebind.test:{port}"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Test"] == "1"


def test_rebinding_to_loopback_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name resolves to loopback at request time: refused, nothing connected."""
    _fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"]]})
    connected: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connected.append(a))
    with pytest.raises(UrlError) as info:
        post_json("http://rebind.test/hook", b"{}", {}, timeout=5, allow_private=False)
    assert info.value.code == "url_forbidden"
    assert connected == []


def test_post_json_does_not_follow_redirects(server: _Server) -> None:
    status, headers, _ = post_json(
        f"http://127.0.0.1:{_port(server)}/redirect", b"{}", {}, timeout=5, allow_private=True
    )
    assert status == 302
    assert headers["Location"] == "/file.wav"
    assert [r[1] for r in server.requests] == ["/redirect"]


def test_post_json_network_failure() -> None:
    with pytest.raises(UrlError) as info:
        post_json(f"http://127.0.0.1:{free_port()}/hook", b"{}", {}, timeout=5, allow_private=True)
    assert info.value.code == "request_failed"
    assert "connection failed" in info.value.message


def test_post_json_refuses_loopback_by_default(server: _Server) -> None:
    with pytest.raises(UrlError) as info:
        post_json(f"http://127.0.0.1:{_port(server)}/hook", b"{}", {}, timeout=5, allow_private=False)
    assert info.value.code == "url_forbidden"
    assert server.requests == []


# -- downloads ----------------------------------------------------------------------------------------


def test_download_streams_to_disk(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "in" / "audio.bin"
    size, sha, content_type = download(
        f"http://127.0.0.1:{_port(server)}/file.wav", dest, max_bytes=10 * len(PAYLOAD), timeout=5,
        allow_private=True,
    )  # fmt: skip
    assert size == len(PAYLOAD)
    assert sha == hashlib.sha256(PAYLOAD).hexdigest()
    assert content_type == "audio/wav"
    assert dest.read_bytes() == PAYLOAD


def test_download_follows_a_redirect(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "audio.bin"
    size, sha, _ = download(
        f"http://127.0.0.1:{_port(server)}/redirect",
        dest,
        max_bytes=len(PAYLOAD),
        timeout=5,
        allow_private=True,
    )
    assert (size, sha) == (len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    assert [r[1] for r in server.requests] == ["/redirect", "/file.wav"]


def test_download_checks_every_redirect_target(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = netguard.forbidden_reason
    # pretend 127.0.0.1 is public so that the first hop is allowed; 127.0.0.2 stays loopback
    monkeypatch.setattr(netguard, "forbidden_reason", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))
    dest = tmp_path / "audio.bin"
    with pytest.raises(UrlError) as info:
        download(
            f"http://127.0.0.1:{_port(server)}/redirect-away", dest, max_bytes=len(PAYLOAD), timeout=5,
            allow_private=False,
        )  # fmt: skip
    assert info.value.code == "url_forbidden"
    assert "127.0.0.2" in info.value.message
    assert [r[1] for r in server.requests] == ["/redirect-away"]
    assert not dest.exists()


def test_download_gives_up_on_redirect_loops(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UrlError) as info:
        download(f"http://127.0.0.1:{_port(server)}/loop", tmp_path / "x", max_bytes=100, timeout=5,
                 allow_private=True)  # fmt: skip
    assert info.value.code == "download_failed"
    assert "redirects" in info.value.message
    assert len(server.requests) == netguard.MAX_REDIRECTS + 1


@pytest.mark.parametrize("path", ["/file.wav", "/chunked"])
def test_download_over_the_limit(server: _Server, tmp_path: Path, path: str) -> None:
    dest = tmp_path / "audio.bin"
    with pytest.raises(UrlError) as info:
        download(f"http://127.0.0.1:{_port(server)}{path}", dest, max_bytes=len(PAYLOAD) - 1, timeout=5,
                 allow_private=True)  # fmt: skip
    assert info.value.code == "file_too_large"
    assert not dest.exists()


def test_download_http_error(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "audio.bin"
    with pytest.raises(UrlError) as info:
        download(f"http://127.0.0.1:{_port(server)}/missing.wav", dest, max_bytes=100, timeout=5,
                 allow_private=True)  # fmt: skip
    assert info.value.code == "download_failed"
    assert "404" in info.value.message
    assert not dest.exists()


def test_download_network_failure(tmp_path: Path) -> None:
    with pytest.raises(UrlError) as info:
        download(f"http://127.0.0.1:{free_port()}/a.wav", tmp_path / "a", max_bytes=100, timeout=5,
                 allow_private=True)  # fmt: skip
    assert info.value.code == "download_failed"
    assert "connection failed" in info.value.message


def test_download_refuses_loopback_by_default(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(UrlError) as info:
        download(f"http://127.0.0.1:{_port(server)}/file.wav", tmp_path / "a", max_bytes=10**9, timeout=5,
                 allow_private=False)  # fmt: skip
    assert info.value.code == "url_forbidden"
    assert server.requests == []
