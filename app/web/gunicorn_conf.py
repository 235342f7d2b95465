"""gunicorn settings for the API: ``gunicorn -c python:app.web.gunicorn_conf "app:create_app()"``.

gunicorn answers the requests it refuses before the app sees them (a request line longer than
``limit_request_line``, too many or too large header fields, malformed HTTP) with a small HTML
page. With this config those answers are RFC 9457 ``application/problem+json`` like every
other error of the API: 414 for an over-long URL, 431 for oversized headers, 400 otherwise.
gunicorn has no hook for the body of these answers, so its ``util.write_error`` — the one
function its workers (gthread and gevent alike) call to write them — is replaced here; the
config module runs in the master before the workers fork, so every worker has it.

It imports nothing of the app at module level: under the stream service's gevent worker the
app must be imported after gevent patched the standard library (in the worker, which loads
the app itself), or gevent warns that modules imported earlier keep unpatched ``ssl`` names.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

#: Longest request line (method, URL with query string, version) in bytes: gunicorn's default,
#: stated here because docs/api.md documents it; a longer one is a 414 problem.
limit_request_line = 4094
#: Longest header field in bytes (gunicorn's default); a longer one is a 431 problem.
limit_request_field_size = 8190


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's own error answer as problem+json instead of HTML."""
    from app.web.problems import problem_document  # see the module: not in the master

    document = problem_document(status_int, mesg or None, title=reason)
    body = json.dumps(document).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_problem
