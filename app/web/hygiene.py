"""Input hygiene at the door: request bodies are parsed and bounded here, and NUL is refused.

- JSON bodies are parsed strictly (``app.store.jsoncodec``): invalid JSON or UTF-8, ``NaN`` and
  ``Infinity``, numbers out of range, lone UTF-16 surrogates and NUL characters are a 400
  problem, never a 500 later on and never something the service would write back out.
- A body over ``MAX_CONTENT_LENGTH`` is a 413 whether it was sent with ``Content-Length`` or
  chunked (werkzeug silently truncates a chunked body at the limit).
- The app's Flask JSON provider writes strict JSON (``NaN`` is an error, not output).

PostgreSQL cannot store NUL in text columns, and no legitimate API input needs one; refusing
them here keeps a driver error from ever turning into a 500 deep inside a view.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

from app.store import jsoncodec
from app.web.problems import Problem


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def refuse_nul(data: Any) -> Any:
    """Return ``data`` (parsed JSON), or raise 400 if any string in it contains NUL."""
    if _has_nul(data):
        raise Problem(400, "NUL characters are not allowed in JSON strings.")
    return data


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as strict JSON, or raise a 400 problem saying why not."""
    try:
        return refuse_nul(jsoncodec.loads(body))
    except RecursionError as exc:
        raise Problem(400, "The JSON body is nested too deeply.") from exc
    except UnicodeDecodeError as exc:
        raise Problem(400, "The body is not valid UTF-8.") from exc
    except jsoncodec.StrictJSONError as exc:
        raise Problem(400, f"The body is not valid JSON: {exc}.") from exc
    except ValueError as exc:  # JSONDecodeError
        raise Problem(400, f"The body is not valid JSON: {exc}.") from exc


class _MaxStream(LimitedStream):
    """A streamed (chunked) body capped at ``MAX_CONTENT_LENGTH``: reading past it is a 413.

    werkzeug's ``readall`` stops quietly at the cap, so a too-large chunked JSON body used to
    arrive truncated and fail as "invalid JSON"; here one more byte is tried at the cap.
    """

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted and self._stream.read(1):
            raise RequestEntityTooLarge()
        return data


class BoundedRequest(Request):
    """Flask's request with the 413 also applied to chunked bodies read whole."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        terminated = "wsgi.input_terminated" in self.environ  # the server de-chunks
        if self.content_length is None and limit is not None and terminated and not self.shallow:
            return _MaxStream(self.environ["wsgi.input"], limit, is_max=True)  # type: ignore[return-value]
        return get_input_stream(self.environ, max_content_length=limit)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, strict both ways (see ``app.store.jsoncodec``)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return jsoncodec.loads(s)


def init_app(app: Flask) -> None:
    """Install the strict JSON provider, the bounded request and the query-string check."""
    app.json = StrictJSONProvider(app)
    app.request_class = BoundedRequest

    @app.before_request
    def _refuse_nul_in_query() -> None:
        if "\x00" in request.path:
            raise Problem(400, "NUL characters are not allowed in the path.")
        raw = request.query_string
        if (b"%00" in raw or b"\x00" in raw) and _has_nul(list(request.args.values())):
            raise Problem(400, "NUL characters are not allowed in query parameters.")
