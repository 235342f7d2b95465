"""The gateway's proxy: one client request → (retried) upstream request → streamed answer.

Kong-like semantics: the caller's key and hop-by-hop headers never reach the upstream; the
request transformer runs (remove → rename → replace → add → append); upstream credentials come
from the integration's config; ``X-Forwarded-*`` and the request id are added. Bodies stream
both ways in 64 KiB chunks. Only idempotent requests whose body was not sent are retried, and
only on a connection error or a 502/503/504, each time on another upstream. An upstream whose
connections are all busy (see ``app.gateway.capacity``) is never sent to: the request moves to
another upstream, or is refused as saturated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote, urlencode

from flask import Request
from urllib3 import Timeout
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import BaseHTTPResponse

from app.gateway.balancer import Upstream, UpstreamBalancer
from app.gateway.transform import apply_request_transform
from app.outbound.guard import BlockedDestination, GuardedSession
from app.outbound.session import USER_AGENT

CHUNK = 64 * 1024
LOGGED_BODY_BYTES = 4096
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: the caller's Switchboard credentials, and what we recompute.
STRIPPED_REQUEST = frozenset({"authorization", "x-api-key", "host", "content-length", "cookie"})


class AllUpstreamsDown(Exception):
    """No upstream can take the request (all ejected, or all tried)."""


class UpstreamFailed(Exception):
    """The last upstream tried failed in a way that is not retried."""

    def __init__(self, message: str, status: int, upstream: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.upstream = upstream


class UpstreamSaturated(UpstreamFailed):
    """Every upstream that could take the request has all its connections busy."""

    def __init__(self, upstream: str) -> None:
        super().__init__("upstream saturated: every connection to it is busy", 503, upstream)


@dataclass
class CountingStream:
    """Wraps the client's body stream: counts bytes and keeps a bounded prefix for logs."""

    raw: IO[bytes]
    len: int | None = None  # a known length is sent as Content-Length, else chunked
    keep: int = 0
    sent: int = 0
    head: bytearray = field(default_factory=bytearray)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(CHUNK if size is None or size < 0 else size)
        self.sent += len(data)
        if len(self.head) < self.keep:
            self.head += data[: self.keep - len(self.head)]
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


def outgoing_headers(
    request: Request, config: dict[str, Any], auth_headers: dict[str, str], request_id: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Headers and query for the upstream, after hygiene, transformation and credentials."""
    connection_listed = {
        token.strip().lower()
        for token in request.headers.get("Connection", "").split(",")
        if token.strip()
    }
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in HOP_BY_HOP | STRIPPED_REQUEST | connection_listed
        and not name.lower().startswith("x-forwarded-")
    ]
    query = list(request.args.items(multi=True))
    headers, query = apply_request_transform(config.get("transform") or {}, headers, query)
    present = {name.lower() for name, _ in headers}
    for name, value in (config.get("headers") or {}).items():
        if name.lower() not in present:
            headers.append((name, value))
    credential_names = {name.lower() for name in auth_headers}
    headers = [(n, v) for n, v in headers if n.lower() not in credential_names]
    headers += list(auth_headers.items())
    forwarded_for = request.headers.get("X-Forwarded-For")
    client = request.remote_addr or ""
    headers += [
        ("X-Forwarded-For", f"{forwarded_for}, {client}" if forwarded_for else client),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-Host", request.host),
        ("X-Request-Id", request_id),
    ]
    return headers, query


def _merge(headers: list[tuple[str, str]], body: CountingStream | None) -> dict[str, str]:
    """One value per name (repeated headers joined with ", ", RFC 9110), a default
    ``User-Agent``, and the body's framing: ``Content-Length`` when known, else chunked."""
    merged: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in merged:
            merged[key] += ", " + value
        else:
            merged[key] = value
            spelled[key] = name
    result = {spelled[k]: v for k, v in merged.items()}
    if "user-agent" not in merged:
        result["User-Agent"] = USER_AGENT
    if body is not None and body.len is not None:
        result["Content-Length"] = str(body.len)
    return result


def response_headers(response: BaseHTTPResponse) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones."""
    listed = {
        t.strip().lower() for t in response.headers.get("Connection", "").split(",") if t.strip()
    }
    return [
        (name, value)
        for name, value in response.headers.items()
        if name.lower() not in HOP_BY_HOP | listed
    ]


@dataclass
class ProxyAttempt:
    """The upstream response to stream back, and which upstream gave it."""

    response: BaseHTTPResponse
    upstream: Upstream
    attempts: int


# RFC 3986 pchar besides unreserved characters, and "/" between segments: everything else in
# the (decoded) path is percent-encoded, "%", "?" and "#" included, so the upstream gets the path
# the client meant — never one that decodes into dot segments or a query of its own.
_PATH_SAFE = "/!$&'()*+,;=:@"


def upstream_url(base: str, path: str, query: list[tuple[str, str]]) -> str:
    """``base`` + the percent-encoded ``path`` + the encoded ``query``."""
    url = base.rstrip("/") + "/" + quote(path, safe=_PATH_SAFE)  # "//" stays: the client's
    if query:
        url += "?" + urlencode(query)
    return url


def send_with_retries(
    *,
    session: GuardedSession,
    balancer: UpstreamBalancer,
    pool_id: str,
    upstreams: list[Upstream],
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
    body: CountingStream | None,
    timeout: float,
    queue_seconds: float,
) -> ProxyAttempt:
    """Send to upstreams picked by the balancer until one answers (or retrying must stop).

    The request goes straight through the session's guarded urllib3 pool (keep-alive, the
    SSRF guard on every new connection), without ``requests``' per-call overhead. A pool with
    no free connection for ``queue_seconds`` counts as saturated, not failed.
    """
    tried: set[str] = set()
    merged = _merge(headers, body)
    limits = Timeout(connect=min(timeout, 5.0), read=timeout)
    last_error: UpstreamFailed | None = None
    while True:
        picked = balancer.pick(pool_id, upstreams, exclude=tried)
        if picked is None:
            if last_error is not None:
                raise last_error
            raise AllUpstreamsDown("every upstream is ejected after failing; retry shortly")
        upstream = picked.upstream
        tried.add(upstream.url)
        may_retry = method in IDEMPOTENT
        try:
            response = session.urlopen(
                method,
                upstream_url(upstream.url, path, query),
                headers=merged,
                body=body,
                preload_content=False,
                decode_content=False,
                timeout=limits,
                pool_timeout=queue_seconds,
            )
        except EmptyPoolError:
            last_error = UpstreamSaturated(upstream.url)  # nothing was sent: try another
            continue
        except BlockedDestination as exc:
            reason = str(exc).rsplit(": ", 1)[-1]  # not the resolved address: that stays in logs
            raise UpstreamFailed(
                f"upstream refused by the SSRF guard ({reason})", 502, upstream.url
            ) from exc
        except (NewConnectionError, ConnectTimeoutError, ProtocolError, SSLError) as exc:
            balancer.report_failure(pool_id, upstream, probe=picked.probe)
            last_error = UpstreamFailed(
                f"could not connect to the upstream: {type(exc).__name__}", 502, upstream.url
            )
            if may_retry and (body is None or body.sent == 0):
                continue
            raise last_error from exc
        except ReadTimeoutError as exc:
            balancer.report_failure(pool_id, upstream, probe=picked.probe)
            raise UpstreamFailed(
                f"the upstream did not answer within {timeout:g} s", 504, upstream.url
            ) from exc
        except (HTTPError, ValueError) as exc:  # e.g. a header the config made invalid
            raise UpstreamFailed(
                f"the request could not be sent upstream: {type(exc).__name__}", 502, upstream.url
            ) from exc
        if response.status >= 500:
            balancer.report_failure(pool_id, upstream, probe=picked.probe)
            retryable = response.status in RETRY_STATUSES and may_retry
            if retryable and (body is None or body.sent == 0) and len(tried) < len(upstreams):
                discard(response)
                last_error = UpstreamFailed(
                    f"upstream answered {response.status}", response.status, upstream.url
                )
                continue
        elif picked.tracked:  # a clean upstream has nothing to reset: skip the round trip
            balancer.report_success(pool_id, upstream, probe=picked.probe)
        return ProxyAttempt(response, upstream, len(tried))


def safe_path(path: str) -> str:
    """The upstream path, refusing ``.``/``..`` segments that would climb out of the base URL."""
    if any(segment in (".", "..") for segment in path.replace("\\", "/").split("/")):
        raise ValueError("path segments '.' and '..' are not allowed")
    return path


def stream_body(response: BaseHTTPResponse, on_chunk: Any) -> Iterator[bytes]:
    """Yield the upstream body as it arrives (undecoded), reporting each chunk's size.

    A body read to its end hands the connection back to the pool (keep-alive); closing one
    cut short closes the connection instead.
    """
    try:
        for chunk in response.stream(CHUNK, decode_content=False):
            on_chunk(chunk)
            yield chunk
    finally:
        discard(response)


def discard(response: BaseHTTPResponse) -> None:
    """Close ``response`` and give its pool slot back: the connection if the body was read to
    its end (already back then), else a closed one that the pool reopens when next needed. (A
    closed response alone keeps its slot, and a blocking pool would run out of them.)"""
    response.close()
    response.release_conn()


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
