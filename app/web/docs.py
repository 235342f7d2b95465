"""``/docs``: Swagger UI served from the service itself (vendored, version-pinned), and a favicon.

Nothing on the page comes from another origin, and its Content-Security-Policy keeps it that
way: the admin UI works air-gapped, and the page where admins paste keys runs only our files.
"""

from __future__ import annotations

from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    render_template_string,
    send_from_directory,
    url_for,
)

#: The vendored ``swagger-ui-dist`` release in ``swagger_ui/`` (see its README to upgrade).
SWAGGER_UI_VERSION = "5.35.0"
ASSETS = Path(__file__).resolve().parent / "swagger_ui"
_ASSET_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "switchboard-init.js"})
#: Versioned asset URLs never change content, so browsers may keep them.
_ASSET_MAX_AGE = 365 * 86400
_ICON_MAX_AGE = 86400

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # Swagger UI (React) sets style attributes
        "img-src 'self' data:",  # its icons are inline SVG data URLs
        "connect-src 'self'",  # the spec and "Try it out" requests
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} API</title>
  <link rel="icon" type="image/png" href="{{ url_for('docs.favicon') }}">
  <link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{{ spec_url }}"></div>
  <script src="{{ asset('swagger-ui-bundle.js') }}"></script>
  <script src="{{ asset('switchboard-init.js') }}"></script>
</body>
</html>
"""

blp = Blueprint("docs", __name__)


@blp.get("/docs")
def swagger_ui() -> Response:
    """The Swagger UI page for the live OpenAPI document."""
    page = render_template_string(
        PAGE,
        title=current_app.config["API_TITLE"],
        asset=lambda name: url_for("docs.asset", version=SWAGGER_UI_VERSION, filename=name),
        spec_url=url_for("api-docs.openapi_json"),
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.get("/docs/assets/<version>/<filename>")
def asset(version: str, filename: str) -> Response:
    """One vendored Swagger UI file, cacheable for a year (its URL names the version)."""
    if version != SWAGGER_UI_VERSION or filename not in _ASSET_FILES:
        abort(404)
    return send_from_directory(ASSETS, filename, max_age=_ASSET_MAX_AGE)


@blp.get("/favicon.ico")
def favicon() -> Response:
    """Switchboard's icon (a PNG: browsers sniff the format, not the extension)."""
    return send_from_directory(ASSETS, "favicon.png", mimetype="image/png", max_age=_ICON_MAX_AGE)


def init_app(app: Flask) -> None:
    """Serve ``/docs``, its assets and ``/favicon.ico``."""
    app.register_blueprint(blp)
