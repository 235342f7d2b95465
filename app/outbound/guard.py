"""The one HTTP client factory: a `requests` session with an SSRF guard.

Every outbound call (webhooks, connectors, the gateway) goes through `make_session()`. Only
globally routable unicast addresses are reachable unless a network is opened explicitly
(`SWITCHBOARD_ALLOWED_NETWORKS`). The guard runs twice: `check_url()` gives a clear error when
a URL is saved, and every new connection resolves the host itself, connects only to an allowed
address and checks the peer it actually reached, so DNS rebinding and redirects cannot slip past.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import sys
from collections.abc import Iterable
from typing import Any

import certifi
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.poolmanager import PoolManager
from urllib3.response import BaseHTTPResponse
from urllib3.util import connection as urllib3_connection
from urllib3.util import parse_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworksLike = str | Iterable[str | IPNetwork] | None
Timeout = float | tuple[float, float]

# First match wins, so narrower ranges come before the ranges that contain them.
_BLOCKED_RANGES: dict[str, str] = {
    "unspecified address": "0.0.0.0/32 ::/128",
    "loopback address": "127.0.0.0/8 ::1/128",
    "this-network address": "0.0.0.0/8",
    "private address": "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16",
    "shared (CGNAT) address": "100.64.0.0/10",
    "link-local address": "169.254.0.0/16 fe80::/10",
    "documentation address": "192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 2001:db8::/32 3fff::/20",
    "benchmarking address": "198.18.0.0/15 2001:2::/48",
    "multicast address": "224.0.0.0/4 ff00::/8",
    "broadcast address": "255.255.255.255/32",
    "unique-local address": "fc00::/7",
    "site-local address": "fec0::/10",
    "IPv4-compatible address": "::/96",
    "reserved address": "192.0.0.0/24 192.88.99.0/24 240.0.0.0/4 64:ff9b:1::/48 100::/64 2001::/23",
}
_BLOCKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for reason, nets in _BLOCKED_RANGES.items()
    for net in nets.split()
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """A URL that the service refuses to call (bad scheme, no host, or a blocked address)."""

    def __init__(self, message: str, *, unresolvable: bool = False) -> None:
        super().__init__(message)
        self.unresolvable = unresolvable  # opening a network would not help


class BlockedDestination(requests.exceptions.ConnectionError):
    """A connection refused by the SSRF guard; never retried."""


#: What stored history says about a refused call (never the address the host resolved to). A
#: refusal is permanent until the URL or ``SWITCHBOARD_ALLOWED_NETWORKS`` changes, so callers
#: record it as a final failure instead of retrying.
REFUSED = (
    "destination refused by the outbound guard: not a public address and not in "
    "SWITCHBOARD_ALLOWED_NETWORKS (not retried)"
)


def refused_by_guard(exc: BaseException) -> bool:
    """True if ``exc`` is, or was raised from, a ``BlockedDestination``."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # a chain can loop back on itself
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(isinstance(link, BlockedDestination) for link in chain)


class _RefusedConnection(Exception):
    """Raised inside urllib3: not an OSError, so urllib3 neither wraps nor retries it."""


def parse_networks(value: NetworksLike) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (comma/whitespace separated, or an iterable of them) into networks."""
    if value is None:
        return ()
    items: Iterable[str | IPNetwork] = [value] if isinstance(value, str) else value
    networks: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
            continue
        for token in re.split(r"[\s,]+", str(item).strip()):
            if not token:
                continue
            try:
                networks.append(ipaddress.ip_network(token, strict=False))
            except ValueError:
                raise ValueError(
                    f"invalid network {token!r}: expected an IP address or CIDR range "
                    "such as 127.0.0.0/8 or fd00::/8"
                ) from None
    return tuple(networks)


def blocked_reason(ip: str | IPAddress, allowed_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Return why `ip` may not be contacted (e.g. "private address"), or None if it may."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    allowed = tuple(allowed_networks)
    if any(addr in net for net in allowed):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        embedded, form = _embedded_ipv4(addr)
        if embedded is not None:
            reason = blocked_reason(embedded, allowed)
            return f"{reason} ({form} {embedded})" if reason else None
    for net, reason in _BLOCKS:
        if addr in net:
            return reason
    if isinstance(addr, ipaddress.IPv6Address) and addr not in _GLOBAL_UNICAST_V6:
        return "reserved address"
    return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    """The IPv4 address an IPv6 address really leads to (mapped, NAT64, 6to4), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, "IPv4-mapped"
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "NAT64"
    if addr.sixtofour is not None:
        return addr.sixtofour, "6to4"
    return None, ""


def is_address_allowed(ip: str | IPAddress, allowed_networks: Iterable[IPNetwork] = ()) -> bool:
    """True if `ip` is globally routable unicast or inside one of `allowed_networks`."""
    return blocked_reason(ip, allowed_networks) is None


def resolve_host(host: str, port: int | None) -> list[str]:
    """Resolve `host` to its distinct IP addresses, in resolver order (patchable in tests)."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, allowed_networks: NetworksLike = ()) -> None:
    """Raise UnsafeURL unless `url` is http(s) and every address its host resolves to is allowed."""
    allowed = parse_networks(allowed_networks)
    try:
        parsed = parse_url(url)
    except LocationParseError as exc:
        raise UnsafeURL(f"{url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("URL scheme must be http or https")
    host = (parsed.host or "").strip("[]")
    if not host:
        raise UnsafeURL("URL has no host")
    try:
        addresses = resolve_host(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError):
        raise UnsafeURL(f"host {host!r} does not resolve", unresolvable=True) from None
    if not addresses:
        raise UnsafeURL(f"host {host!r} does not resolve", unresolvable=True)
    for address in addresses:
        reason = blocked_reason(address, allowed)
        if reason:
            via = "" if address == host else f" (resolved from {host!r})"
            raise UnsafeURL(f"refusing to call {address}{via}: {reason}")


def _open_guarded_socket(conn: HTTPConnection, allowed: tuple[IPNetwork, ...]) -> socket.socket:
    """Resolve, connect only to an allowed address, then verify the peer actually reached."""
    host = conn._dns_host.strip("[]")
    try:
        candidates = resolve_host(host, conn.port)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    refusal, error = "", None
    for ip in candidates:
        via = "" if ip == host else f" (resolved from {host!r})"
        reason = blocked_reason(ip, allowed)
        if reason:
            refusal = refusal or f"refused to connect to {ip}{via}: {reason}"
            continue
        try:
            sock = urllib3_connection.create_connection(
                (ip, conn.port), conn.timeout, conn.source_address, conn.socket_options
            )
        except OSError as exc:
            error = exc
            continue
        peer = str(sock.getpeername()[0])
        reason = blocked_reason(peer, allowed)
        if reason:
            sock.close()
            raise _RefusedConnection(f"refused to connect to {peer}{via}: {reason}")
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out.") from error
    if error is not None:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error
    raise _RefusedConnection(refusal or f"refused to connect to {host}: no address")


class GuardedHTTPConnection(HTTPConnection):
    """HTTP connection whose socket is opened by the SSRF guard."""

    def __init__(self, *args: Any, allowed_networks: tuple[IPNetwork, ...] = (), **kw: Any):
        super().__init__(*args, **kw)
        self.allowed_networks = allowed_networks

    def _new_conn(self) -> socket.socket:
        return _open_guarded_socket(self, self.allowed_networks)


class GuardedHTTPSConnection(HTTPSConnection):
    """HTTPS connection whose socket is opened by the SSRF guard; TLS still uses the hostname."""

    def __init__(self, *args: Any, allowed_networks: tuple[IPNetwork, ...] = (), **kw: Any):
        super().__init__(*args, **kw)
        self.allowed_networks = allowed_networks

    def _new_conn(self) -> socket.socket:
        return _open_guarded_socket(self, self.allowed_networks)


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class _GuardedPoolManager(PoolManager):
    """Pool manager that only builds guarded pools, all bound to one allow-list."""

    def __init__(self, allowed_networks: tuple[IPNetwork, ...], **kwargs: Any) -> None:
        # The CA bundle requests verifies against (certifi), also for GuardedSession.urlopen,
        # which does not go through requests.
        kwargs.setdefault("cert_reqs", "CERT_REQUIRED")
        kwargs.setdefault("ca_certs", certifi.where())
        super().__init__(**kwargs)
        self.allowed_networks = allowed_networks
        self.pool_classes_by_scheme = {
            "http": GuardedHTTPConnectionPool,
            "https": GuardedHTTPSConnectionPool,
        }

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["allowed_networks"] = self.allowed_networks  # passed to ConnectionCls
        return pool


class GuardedAdapter(HTTPAdapter):
    """Transport adapter whose every connection passes the SSRF guard; proxies are refused.

    With ``ssl_context`` (a client certificate, a private CA), HTTPS connections use that
    context alone: it decides which certificates are trusted, not the default CA bundle.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "allowed_networks", "ssl_context"]

    def __init__(
        self,
        allowed_networks: NetworksLike = (),
        ssl_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        self.allowed_networks = parse_networks(allowed_networks)
        self.ssl_context = ssl_context
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        if self.ssl_context is not None:
            pool_kwargs.update(ssl_context=self.ssl_context, ca_certs=None)
        self.poolmanager = _GuardedPoolManager(
            self.allowed_networks,
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            **pool_kwargs,
        )

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if self.ssl_context is None:  # else the context verifies: no default bundle added
            super().cert_verify(conn, url, verify, cert)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a proxy the guard could only see the proxy's address, never the target's.
        raise _RefusedConnection(f"refused to connect through proxy {proxy}: proxies are disabled")

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        try:
            return super().send(request, *args, **kwargs)
        except _RefusedConnection as exc:
            raise BlockedDestination(str(exc), request=request) from None


class GuardedSession(requests.Session):
    """`requests.Session` with the SSRF guard, no environment proxies and a default timeout."""

    def __init__(
        self,
        allowed_networks: NetworksLike = (),
        *,
        pool_maxsize: int = 32,
        pool_block: bool = False,
        default_timeout: Timeout = (3.05, 30),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.trust_env = False  # no *_PROXY, netrc or CA-bundle variables from the environment
        self.default_timeout = default_timeout
        self.allowed_networks = parse_networks(allowed_networks)
        adapter = self.guarded_adapter = GuardedAdapter(
            self.allowed_networks,
            ssl_context,
            pool_connections=max(10, pool_maxsize),
            pool_maxsize=pool_maxsize,
            pool_block=pool_block,
        )
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, **kwargs)

    def urlopen(self, method: str, url: str, **kwargs: Any) -> BaseHTTPResponse:
        """One request straight through the session's guarded urllib3 pools.

        For a hot path that needs none of ``requests``' per-call work (merging settings,
        cookies, hooks, a ``Response`` wrapper): the same pooled connections and the same
        guard, but no redirects, no retries and no default headers. ``kwargs`` go to urllib3's
        ``PoolManager.urlopen``; a refused destination raises ``BlockedDestination``.
        """
        manager = self.guarded_adapter.poolmanager
        try:
            return manager.urlopen(method, url, redirect=False, retries=False, **kwargs)
        except _RefusedConnection as exc:
            raise BlockedDestination(str(exc)) from None


def make_session(
    allowed_networks: NetworksLike = (),
    *,
    pool_maxsize: int = 32,
    pool_block: bool = False,
    user_agent: str | None = None,
    default_timeout: Timeout = (3.05, 30),
    ssl_context: ssl.SSLContext | None = None,
) -> GuardedSession:
    """Build the guarded session used for every outbound HTTP call (``ssl_context``: see
    :class:`GuardedAdapter`). ``pool_maxsize`` connections are kept per host; with
    ``pool_block`` they are also the most a host gets at once (a caller waits for one, up to
    urllib3's ``pool_timeout``), else more are opened and closed after use."""
    session = GuardedSession(
        allowed_networks,
        pool_maxsize=pool_maxsize,
        pool_block=pool_block,
        default_timeout=default_timeout,
        ssl_context=ssl_context,
    )
    session.headers["User-Agent"] = (
        user_agent or f"Switchboard python-requests/{requests.__version__}"
    )
    return session
