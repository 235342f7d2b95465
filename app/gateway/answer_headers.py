"""Which upstream response headers reach the client, served from Switchboard's own origin.

The gateway answers on the API's origin, where Switchboard's own cookies and CORS policy live,
so an upstream must not set them there: ``Set-Cookie`` is dropped unless the integration allows
cookies (``allow_cookies``), every ``Access-Control-*`` header is dropped (the API's own CORS
policy applies), and a ``Location`` is rewritten into the gateway's path when it points inside
one of the integration's upstreams, or dropped when it points anywhere else. Every answer says
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from urllib3.response import BaseHTTPResponse

from app.gateway.proxy import response_headers

COOKIE_HEADERS = frozenset({"set-cookie", "set-cookie2"})


def client_headers(
    response: BaseHTTPResponse,
    requested_url: str,
    upstream_bases: list[str],
    gateway_base: str,
    allow_cookies: bool,
) -> list[tuple[str, str]]:
    """The headers of ``response`` (to a request for ``requested_url``) to pass on.

    Args:
        upstream_bases: the integration's upstream URLs.
        gateway_base: the gateway's path for the integration, ending in ``/``.
        allow_cookies: pass ``Set-Cookie`` through.
    """
    headers = []
    for name, value in response_headers(response):
        lowered = name.lower()
        if lowered.startswith("access-control-") or lowered == "x-content-type-options":
            continue
        if lowered in COOKIE_HEADERS and not allow_cookies:
            continue
        if lowered in ("location", "content-location"):
            rewritten = gateway_location(value, requested_url, upstream_bases, gateway_base)
            if rewritten is None:
                continue
            value = rewritten
        headers.append((name, value))
    headers.append(("X-Content-Type-Options", "nosniff"))
    return headers


def gateway_location(
    location: str, requested_url: str, upstream_bases: list[str], gateway_base: str
) -> str | None:
    """``location`` (resolved against ``requested_url``) as a path under ``gateway_base`` when
    it lies inside one of ``upstream_bases``; else None."""
    try:
        target = urlsplit(urljoin(requested_url, location.strip()))
    except ValueError:
        return None
    for base in upstream_bases:
        root = urlsplit(base)
        prefix = root.path.rstrip("/") + "/"
        same_origin = (target.scheme, target.netloc.lower()) == (root.scheme, root.netloc.lower())
        if not same_origin:
            continue
        path = target.path or "/"
        if path == prefix.rstrip("/") or path.startswith(prefix):
            rest = path[len(prefix) :] if path.startswith(prefix) else ""
            query = "?" + target.query if target.query else ""
            fragment = "#" + target.fragment if target.fragment else ""
            return gateway_base + rest + query + fragment
    return None
