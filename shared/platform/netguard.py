"""The SSRF guard for outgoing requests: webhook deliveries and ``audio_url`` downloads.

A URL is accepted when its scheme is http or https, it names a host and carries no credentials.
Its host is then resolved, and the request is refused (``url_forbidden``) when ANY resolved
address is private, loopback, link-local, multicast, reserved, unspecified or otherwise not
globally routable, including IPv6 forms that embed such an IPv4 address (IPv4-mapped, 6to4,
Teredo, NAT64) -- unless ``allow_private`` (the ``TONE_ALLOW_PRIVATE_URLS`` setting) is on.

The check applies to the address actually connected to: the request is sent to the checked IP
itself (``http(s)://<ip>:<port>/path``) with the original ``Host`` header and, for https, SNI and
certificate verification on the original host name. A DNS answer that changes between the check
and the connection (DNS rebinding) therefore cannot redirect the request. Environment proxies are
ignored, connections are never pooled across requests (a TLS connection verified for one name is
never reused for another), and redirects are never followed automatically: webhooks treat a 3xx as
a failure, downloads follow at most ``MAX_REDIRECTS``, checking every target the same way.

No database, queue or web framework imports: the API and the workers both use this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.errors import CodedError

MAX_REDIRECTS = 3
USER_AGENT = "tone-platform/1 (+https://github.com/t-tech/T-one)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class UrlError(CodedError):
    """A refused URL or a failed request. ``code``: invalid_url, url_forbidden, request_failed
    (webhooks: the network failed, worth retrying), download_failed, file_too_large."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class _ResolveError(Exception):
    """The host name did not resolve (DNS failure): callers map it to their own code."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, every one of them allowed) and how to
    address the server (``host_header``, ``sni``)."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    addresses: tuple[str, ...]
    host_header: str
    sni: str | None  # https to a host name: the name to verify the certificate against

    def url_for(self, address: str) -> httpx.URL:
        return self.url.copy_with(host=address, port=self.port, username=None, password=None, fragment=None)


def _nat64(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why this address may not be connected to, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        # ::ffff:a.b.c.d and 64:ff9b::a.b.c.d (NAT64) reach the IPv4 address a.b.c.d itself
        for form, v4 in (("IPv4-mapped", ip.ipv4_mapped), ("NAT64", _nat64(ip))):
            if v4 is not None:
                reason = forbidden_reason(v4)
                return None if reason is None else f"{form} form of a {reason} address"
        embedded: list[tuple[str, ipaddress.IPv4Address]] = []
        if ip.sixtofour is not None:
            embedded.append(("6to4", ip.sixtofour))
        if ip.teredo is not None:
            embedded.extend((("Teredo server", ip.teredo[0]), ("Teredo client", ip.teredo[1])))
        for form, v4 in embedded:
            reason = forbidden_reason(v4)
            if reason is not None:
                return f"{form} form of a {reason} address"
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("shared (carrier-grade NAT)", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("non-global", not ip.is_global),
    )
    for name, hit in checks:
        if hit:
            return name
    return None


def _parse(url: str) -> httpx.URL:
    if not isinstance(url, str) or not url.strip():
        raise UrlError("invalid_url", "the URL is empty")
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UrlError("invalid_url", f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlError("invalid_url", "only http and https URLs are allowed")
    if not parsed.raw_host:
        raise UrlError("invalid_url", "the URL names no host")
    if parsed.userinfo:
        raise UrlError("invalid_url", "credentials in the URL are not allowed")
    return parsed


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise _ResolveError(f"cannot resolve host {host!r}: {exc}") from None
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _ResolveError(f"host {host!r} resolved to no IP address")
    return addresses


def resolve(url: str, *, allow_private: bool) -> Target:
    """Check the URL and resolve its host; every address must be allowed. Raises ``UrlError``
    (invalid_url, url_forbidden) or, on DNS failure, ``_ResolveError``."""
    parsed = _parse(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address))
            if reason is not None:
                shown = host if literal is not None else f"{host} ({address})"
                raise UrlError(
                    "url_forbidden",
                    f"{shown} is not a public address ({reason}); such targets are refused "
                    "unless TONE_ALLOW_PRIVATE_URLS is set",
                )
    sni = host if parsed.scheme == "https" and literal is None else None
    return Target(parsed, host, port, tuple(addresses), parsed.netloc.decode("ascii"), sni)


def check_url(url: str, *, allow_private: bool | None = None) -> None:
    """Refuse a URL that is malformed (``invalid_url``: not http/https, no host, credentials,
    a host that does not resolve) or that resolves to a non-public address (``url_forbidden``).

    ``allow_private`` defaults to the ``TONE_ALLOW_PRIVATE_URLS`` setting. The requests made by
    ``post_json`` and ``download`` check again, on the addresses they connect to."""
    if allow_private is None:
        from shared.platform.settings import get_settings

        allow_private = get_settings().allow_private_urls
    try:
        resolve(url, allow_private=allow_private)
    except _ResolveError as exc:
        raise UrlError("invalid_url", str(exc)) from None


def _client(timeout: float) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,  # an environment proxy would connect somewhere else than the checked IP
        limits=httpx.Limits(max_keepalive_connections=0),
    )


@contextlib.contextmanager
def _send(
    client: httpx.Client,
    method: str,
    target: Target,
    headers: Mapping[str, str],
    body: bytes | None,
) -> Iterator[httpx.Response]:
    """Send to each checked address in turn until one connects; the response is streamed."""
    request_headers = {"User-Agent": USER_AGENT, **headers, "Host": target.host_header}
    extensions = {"sni_hostname": target.sni} if target.sni else {}
    last: Exception | None = None
    for address in target.addresses:
        request = client.build_request(
            method, target.url_for(address), headers=request_headers, content=body, extensions=extensions
        )
        try:
            response = client.send(request, stream=True)
        except httpx.ConnectError as exc:  # nothing was sent: the next address may answer
            last = exc
            continue
        try:
            yield response
        finally:
            response.close()
        return
    assert last is not None
    raise last


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        kind = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        kind = "connection failed"
    else:
        kind = "request failed"
    detail = str(exc) or type(exc).__name__
    return f"{kind}: {detail}"


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> tuple[int, httpx.Headers, float]:
    """POST ``body`` (JSON bytes) to ``url`` through the guard; redirects are not followed.

    Returns ``(status_code, response headers, elapsed_ms)`` for any HTTP answer (3xx, 4xx and 5xx
    included; the response body is not read). Raises ``UrlError``: invalid_url or url_forbidden
    (the URL is refused: do not retry), request_failed (DNS, connection, TLS or timeout: the
    message says which)."""
    start = time.perf_counter()
    try:
        target = resolve(url, allow_private=allow_private)
    except _ResolveError as exc:
        raise UrlError("request_failed", str(exc)) from None
    all_headers = {"Content-Type": "application/json", **headers}
    try:
        with _client(timeout) as client, _send(client, "POST", target, all_headers, body) as response:
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            return response.status_code, response.headers, elapsed_ms
    except httpx.HTTPError as exc:
        raise UrlError("request_failed", _describe(exc)) from None


@dataclass(frozen=True)
class DownloadBounds:
    """What a whole download may cost: ``deadline`` seconds in all (None: unbounded), at least
    ``min_rate`` bytes per second on average once ``RATE_GRACE_SECONDS`` have passed (0: any), and
    ``should_stop`` (a cancel) asked after every piece."""

    deadline: float | None = None
    min_rate: float = 0.0
    should_stop: Callable[[], bool] | None = None


RATE_GRACE_SECONDS = 10.0


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
    allow_private: bool,
    bounds: DownloadBounds | None = None,
) -> tuple[int, str, str | None]:
    """Stream ``url`` to ``dest`` in pieces (never whole in memory), following at most
    ``MAX_REDIRECTS`` redirects, each target checked like the first.

    Returns ``(size, sha256 hex, content type or None)``. ``timeout`` bounds connecting and each
    read; ``bounds`` the whole download (checked as each piece arrives, so a stalled read still
    waits out its ``timeout``). Raises ``UrlError``: invalid_url, url_forbidden, file_too_large
    (over ``max_bytes``), download_failed (network failure, an HTTP error status, past the deadline
    or under the minimum rate, named in the message), download_cancelled. A partial file is removed."""
    dest = Path(dest)
    current = url
    started = time.monotonic()
    try:
        with _client(timeout) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                try:
                    target = resolve(current, allow_private=allow_private)
                except _ResolveError as exc:
                    raise UrlError("download_failed", f"download of {current} failed: {exc}") from None
                with _send(client, "GET", target, {"Accept-Encoding": "identity"}, None) as response:
                    if 300 <= response.status_code < 400:
                        location = response.headers.get("Location")
                        if not location:
                            raise UrlError(
                                "download_failed",
                                f"download of {current} failed: HTTP {response.status_code} without Location",
                            )
                        current = str(target.url.join(location))
                        continue
                    if not 200 <= response.status_code < 300:
                        reason = response.reason_phrase or ""
                        raise UrlError(
                            "download_failed",
                            f"download of {current} failed: the server answered HTTP "
                            f"{response.status_code} {reason}".rstrip(),
                        )
                    return _save(response, dest, max_bytes, current, bounds or DownloadBounds(), started)
            raise UrlError(
                "download_failed", f"download of {url} failed: more than {MAX_REDIRECTS} redirects"
            )
    except httpx.HTTPError as exc:
        with contextlib.suppress(OSError):
            dest.unlink(missing_ok=True)
        raise UrlError("download_failed", f"download of {current} failed: {_describe(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink(missing_ok=True)
        raise


def _check_bounds(bounds: DownloadBounds, url: str, size: int, started: float) -> None:
    elapsed = time.monotonic() - started
    if bounds.should_stop is not None and bounds.should_stop():
        raise UrlError("download_cancelled", f"the download of {url} was stopped (the job was cancelled)")
    if bounds.deadline is not None and elapsed > bounds.deadline:
        raise UrlError(
            "download_failed",
            f"download of {url} failed: it took longer than {bounds.deadline:.0f} s ({size} bytes by then)",
        )
    if bounds.min_rate > 0 and elapsed > RATE_GRACE_SECONDS and size < bounds.min_rate * elapsed:
        raise UrlError(
            "download_failed",
            f"download of {url} failed: {size / elapsed:.0f} bytes/s, slower than the minimum of "
            f"{bounds.min_rate:.0f} bytes/s",
        )


def _save(
    response: httpx.Response, dest: Path, max_bytes: int, url: str, bounds: DownloadBounds, started: float
) -> tuple[int, str, str | None]:
    too_large = UrlError("file_too_large", f"the file at {url} is larger than the limit of {max_bytes} bytes")
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise too_large
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        for piece in response.iter_bytes():  # as they arrive (a chunk size would wait for it)
            size += len(piece)
            if size > max_bytes:
                raise too_large
            digest.update(piece)
            out.write(piece)
            _check_bounds(bounds, url, size, started)
    content_type = response.headers.get("Content-Type")
    return size, digest.hexdigest(), (content_type.strip() or None) if content_type else None
