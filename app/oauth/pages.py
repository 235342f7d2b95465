"""What a browser gets back from a callback: a redirect to an allowed ``return_to``, or a page.

``return_to`` must start with one of ``SWITCHBOARD_RETURN_TO_ORIGINS`` (exact origin match), so
the callbacks cannot be turned into open redirects. Pages are tiny, escaped, script-free HTML.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Response, current_app, render_template_string

from app.web.problems import Problem

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · Switchboard</title></head>
<body style="font-family: sans-serif; margin: 3em auto; max-width: 36em">
<h1>{{ title }}</h1><p>{{ message }}</p><p>You can close this window.</p></body></html>
"""
_NO_STORE = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
}


def checked_return_to(url: str | None) -> str | None:
    """``url`` if its origin is allowed (None stays None), else a 422 naming the setting."""
    if not url:
        return None
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    public = urlsplit(current_app.config["PUBLIC_URL"])
    # Switchboard's own pages (the console's SSO sign-in) may always be returned to.
    allowed = [*current_app.config["RETURN_TO_ORIGINS"], f"{public.scheme}://{public.netloc}"]
    if parts.scheme not in ("http", "https") or origin not in allowed:
        raise Problem(
            422,
            "`return_to` must be a URL on an origin listed in SWITCHBOARD_RETURN_TO_ORIGINS.",
            errors={"return_to": ["origin is not allowed"]},
        )
    return url


def redirect_to(
    url: str, *, query: dict[str, str] | None = None, fragment: dict[str, str] | None = None
) -> Response:
    """A bodiless 302 to ``url`` with ``query`` added and ``fragment`` as its fragment."""
    parts = urlsplit(url)
    new_query = parts.query
    if query:
        new_query = "&".join(q for q in (parts.query, urlencode(query)) if q)
    target = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, new_query, urlencode(fragment or {}))
    )
    return Response(status=302, headers={"Location": target, **_NO_STORE})


def result_page(status: int, title: str, message: str) -> Response:
    """A minimal HTML page (autoescaped; no scripts, no external resources)."""
    body = render_template_string(_PAGE, title=title, message=message)
    response = Response(body, status=status, mimetype="text/html", headers=_NO_STORE)
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response
