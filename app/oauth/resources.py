"""OAuth2 connections (``/integrations/{id}/oauth/…``, ``/oauth/callback``) and SSO login
(``/auth/sso/…``)."""

from __future__ import annotations

from typing import Any

from flask import Response, g
from flask.typing import ResponseReturnValue
from flask.views import MethodView

from app.auth.access import current_principal
from app.oauth import binding, connections, identities, sso
from app.oauth.schemas import (
    AuthorizeRequestSchema,
    AuthorizeResultSchema,
    CallbackArgsSchema,
    ConnectionSchema,
    RevokeResultSchema,
    SsoDiscoverArgsSchema,
    SsoDiscoverySchema,
    SsoIdentityPageSchema,
    SsoIdentitySchema,
    SsoLoginArgsSchema,
    SsoLoginResultSchema,
    StartArgsSchema,
)
from app.store.models import SsoIdentity
from app.web.api import Blueprint, PageArgsSchema, links_to, paginate
from app.web.problems import Problem

blp = Blueprint(
    "oauth", __name__, url_prefix="/api/v1", description="OAuth2 connections and SSO login"
)

_REDIRECT: dict[str, Any] = {
    "description": "Redirect (`Location`), no body",
    "headers": {"Location": {"schema": {"type": "string"}}},
}
_PAGE: dict[str, Any] = {
    "description": "A small HTML page saying whether the connection succeeded",
    "schema": {"type": "string"},
    "content_type": "text/html",
}


@blp.route("/integrations/<integration_id>/oauth/authorize", methods=["POST"])
@blp.auth("integrations:write")
@blp.arguments(AuthorizeRequestSchema)
@blp.response(200, AuthorizeResultSchema)
@blp.problem(404, "No such integration")
@blp.problem(409, "The integration is not an OAuth2 connection")
@blp.problem(422, "`return_to` is not on an allowed origin")
def authorize(args: dict[str, Any], integration_id: str) -> dict[str, Any]:
    """Start connecting an OAuth2 integration: open `authorization_url` in the user's browser.

    `authorization_url` is a single-use `/oauth/start` link: it binds the browser that opens
    it (a cookie) and redirects to the provider with a PKCE S256 challenge and a single-use
    `state`, valid 10 minutes. The provider sends the browser back to
    `SWITCHBOARD_PUBLIC_URL/api/v1/oauth/callback` (or the config's `redirect_uri`), where
    Switchboard stores the tokens encrypted — only in the browser that opened the link.
    """
    row = connections.oauth_integration(integration_id)
    return connections.start(row, g.principal, args.get("return_to"))


@blp.route("/integrations/<integration_id>/oauth", methods=["GET"])
@blp.auth("integrations:read")
@blp.response(200, ConnectionSchema)
@blp.problem(404, "No such integration")
@blp.problem(409, "The integration is not an OAuth2 connection")
def connection(integration_id: str) -> dict[str, Any]:
    """Show whether an OAuth2 integration is connected (token metadata, never tokens)."""
    return connections.status(connections.oauth_integration(integration_id))


@blp.route("/integrations/<integration_id>/oauth/revoke", methods=["POST"])
@blp.auth("integrations:write")
@blp.response(200, RevokeResultSchema)
@blp.problem(404, "No such integration")
@blp.problem(409, "The integration is not an OAuth2 connection, or not connected")
def revoke(integration_id: str) -> dict[str, Any]:
    """Revoke the tokens at the provider (when it has `revoke_url`) and delete them here."""
    return connections.revoke(connections.oauth_integration(integration_id))


@blp.route("/oauth/start", methods=["GET"])
@blp.arguments(StartArgsSchema, location="query")
@blp.alt_response(302, **_REDIRECT)
@blp.problem(400, "Unknown, expired or already used `ticket`")
def oauth_start(args: dict[str, Any]) -> Response:
    """A browser flow's `authorization_url` (OAuth2 connect, SSO link): open it once.

    No key: the single-use `ticket` names the flow. It binds this browser to the flow (an
    HttpOnly cookie the callback requires) and redirects to the provider, so a leaked provider
    URL is useless in any other browser.
    """
    return binding.open_start_link(args["ticket"])


@blp.route("/oauth/callback", methods=["GET"])
@blp.arguments(CallbackArgsSchema, location="query")
@blp.alt_response(200, **_PAGE)
@blp.alt_response(302, **_REDIRECT)
@blp.problem(400, "Unknown, expired or already used `state` (or an HTML page: provider error)")
@blp.alt_response(404, **{**_PAGE, "description": "The integration was deleted meanwhile"})
@blp.alt_response(502, **{**_PAGE, "description": "The code exchange failed"})
def oauth_callback(args: dict[str, Any]) -> Response:
    """Where the provider sends the browser back; no API key: the `state` authenticates it.

    Success stores the tokens, sets the integration `active` and emits `oauth.connected`, then
    redirects to `return_to` (`?oauth=connected&integration_id=…`) or shows a page. Provider
    errors (`error=access_denied`) are logged and shown (`?oauth=error&error=…`).
    """
    return connections.complete(args)


@blp.route("/auth/sso/discover", methods=["GET"])
@blp.arguments(SsoDiscoverArgsSchema, location="query")
@blp.response(200, SsoDiscoverySchema)
@blp.problem(404, "No SSO integration claims the address's domain")
def sso_discover(args: dict[str, Any]) -> dict[str, Any]:
    """Find where an email address signs in: the SSO integration (and tenant) that claims its
    domain. No key: a login page asks it before anyone is signed in."""
    return sso.discover(args["email"])


@blp.route("/auth/sso/<integration_id>/login", methods=["GET"])
@blp.arguments(SsoLoginArgsSchema, location="query")
@blp.alt_response(302, **_REDIRECT)
@blp.problem(404, "No such SSO integration")
@blp.problem(409, "The SSO integration is switched off (inactive)")
@blp.problem(422, "`return_to` is not on an allowed origin")
@blp.problem(502, "The identity provider's discovery document is unusable")
def sso_login(args: dict[str, Any], integration_id: str) -> ResponseReturnValue:
    """Sign in with the organisation's identity provider (OpenID Connect, PKCE, nonce)."""
    return sso.start_login(integration_id, args.get("return_to"))


@blp.route("/auth/sso/<integration_id>/link", methods=["POST"])
@blp.auth(None)
@blp.arguments(AuthorizeRequestSchema)
@blp.response(200, AuthorizeResultSchema)
@blp.problem(403, "The key is not a user's own")
@blp.problem(404, "No such integration")
@blp.problem(409, "Not an SSO integration, or switched off (inactive)")
@blp.problem(422, "`return_to` is not on an allowed origin")
@blp.problem(502, "The identity provider's discovery document is unusable")
def sso_link(args: dict[str, Any], integration_id: str) -> dict[str, Any]:
    """Link your own identity at the SSO integration's provider to your account.

    Needs your own key (a login session, say). Open `authorization_url` once, in your browser:
    it binds that browser and sends it to the provider; signing in there links the identity to
    you (audited as `sso.identity_linked`) and answers a session like any SSO login. This is
    how an account with a password or an admin role, which SSO never links by email, starts
    signing in with SSO. An identity already linked to someone else is refused (`409`).
    """
    principal = current_principal()
    if principal.user is None:
        raise Problem(403, "Only a user's own key can link that user's identity.")
    row = identities.sso_integration_of_tenant(integration_id)
    return sso.start_link(row.id, principal.user, args.get("return_to"))


@blp.route("/auth/sso/callback", methods=["GET"])
@blp.arguments(CallbackArgsSchema, location="query")
@blp.response(200, SsoLoginResultSchema)
@blp.alt_response(302, **_REDIRECT)
@blp.problem(400, "Unknown, expired or already used `state`")
@blp.problem(401, "The identity provider refused, or its ID token is invalid")
@blp.problem(403, "Email domain not allowed, wrong tenant, no account, or user disabled")
@blp.problem(409, "The SSO integration is gone or switched off (inactive)")
@blp.problem(502, "The identity provider could not be reached")
def sso_callback(args: dict[str, Any]) -> ResponseReturnValue:
    """Finish an SSO login: a session key valid 24 hours, like `/auth/login`.

    Without `return_to` the answer is JSON. With it, the browser is redirected to
    `return_to#key=…&key_id=…&expires_at=…` (the fragment never reaches a server), or
    `#error=…&error_description=…` when the login is refused.
    """
    return sso.complete_login(args)


@blp.route("/integrations/<integration_id>/sso/identities")
class SsoIdentities(MethodView):
    @blp.auth("admin")
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, SsoIdentityPageSchema)
    @blp.problem(404, "No such integration")
    @blp.problem(409, "The integration is not an SSO integration")
    def get(self, args: dict[str, Any], integration_id: str) -> dict[str, Any]:
        """List the provider identities that sign in through an SSO integration (admins)."""
        row = identities.sso_integration_of_tenant(integration_id)
        return paginate(identities.identities(row), args)

    @blp.auth("admin")
    @blp.arguments(SsoIdentitySchema)
    @blp.response(201, SsoIdentitySchema)
    @blp.doc(
        **links_to(
            "identity_id",
            "DELETE /api/v1/integrations/{integration_id}/sso/identities/{identity_id}",
            parent="integration_id",
        )
    )
    @blp.problem(403, "The user is a platform admin and the caller is not an operator")
    @blp.problem(404, "No such integration, or the user is no member of this tenant")
    @blp.problem(409, "Not an SSO integration, or the identity is already linked")
    def post(self, data: dict[str, Any], integration_id: str) -> SsoIdentity:
        """Link a provider identity (`subject`) to a member explicitly (admins; audited).

        SSO login never signs a new identity in to an account that has a password or an admin
        role (nor, unless the integration opts in, to any existing account): such a login is
        refused and its audit entry names the user and the `subject`. Linking it here lets
        that identity sign in as the member; the integration's role mapping then applies to
        them. A platform admin's account needs an operator's platform key.
        """
        row = identities.sso_integration_of_tenant(integration_id)
        return identities.link(row, data["user_id"], data["subject"])


@blp.route("/integrations/<integration_id>/sso/identities/<identity_id>", methods=["DELETE"])
@blp.auth("admin")
@blp.response(204)
@blp.problem(404, "No such integration or identity")
@blp.problem(409, "The integration is not an SSO integration")
def unlink_sso_identity(integration_id: str, identity_id: str) -> None:
    """Unlink a provider identity: it no longer signs in (admins; audited)."""
    identities.unlink(identities.sso_integration_of_tenant(integration_id), identity_id)
