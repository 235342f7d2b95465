"""Real identity peers on 127.0.0.1 for the OAuth2 and SSO tests.

- ``AuthorizationServerPeer``: authlib's own server side (``AuthorizationServer`` with the
  authorization-code grant, PKCE required for every client, refresh tokens with or without
  rotation, the client-credentials grant, RFC 7009 revocation) plus a protected ``/api/…``
  resource (GET, and POST as a webhook receiver).
- ``OidcProviderPeer``: a small OpenID provider that signs real RS256 ID tokens with joserfc
  (RSA keys generated per test), serves discovery and JWKS, and checks PKCE itself.

Both run in a thread (werkzeug's threaded server) on a free port. Tests steer them through
attributes (expiry, rotation, which key signs, claim overrides) and read what they received.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _Served:
    """A Flask app served on a free port of 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- authlib authorization server -------------------------------------------------------


@dataclass
class _Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token", "client_credentials")


@dataclass
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_code_challenge(self) -> str | None:
        return self.code_challenge

    def get_code_challenge_method(self) -> str | None:
        return self.code_challenge_method


@dataclass
class _Token:
    """One issued access or refresh token (the same shape serves both)."""

    value: str
    client_id: str
    scope: str
    user: str
    expires_at: float | None = None
    revoked: bool = False

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def valid(self) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > time.time())


class _StrictPkce(CodeChallenge):
    """PKCE for every client, confidential ones included (authlib requires it for public ones)."""

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        if not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge")
        if grant.request.payload.data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationServerPeer:
    """authlib's authorization server with an in-memory store; see the module docstring."""

    def __init__(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.client = _Client(client_id, client_secret, redirect_uri)
        self.expires_in = 3600
        self.rotate_refresh_tokens = True
        self.token_delay = 0.0
        self.token_outage = False  # answer 503 at /token, as a provider having a bad minute
        self.token_requests: list[dict[str, str]] = []
        self.revocations: list[dict[str, str]] = []
        self.api_requests: list[str] = []  # the bearer token of each /api call
        self.codes: dict[str, _Code] = {}
        self.access: dict[str, _Token] = {}
        self.refresh: dict[str, _Token] = {}
        self._lock = threading.Lock()
        self.served = _Served(self._build())

    @property
    def url(self) -> str:
        return self.served.url

    def close(self) -> None:
        self.served.close()

    def revoke_all_refresh_tokens(self) -> None:
        for token in self.refresh.values():
            token.revoked = True

    def revoke_access_token(self, value: str) -> None:
        self.access[value].revoked = True

    def _build(self) -> Flask:
        peer = self
        app = Flask("authorization-server")
        server = AuthorizationServer(app, query_client=self._query_client, save_token=self._save)
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **kw: generate_token(42),
                refresh_token_generator=lambda **kw: generate_token(48),
                expires_generator=lambda client, grant_type: peer.expires_in,
            ),
        )

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                peer.codes[code] = _Code(
                    code,
                    req.client.client_id,
                    req.payload.redirect_uri,
                    req.payload.scope or "",
                    req.user,
                    data.get("code_challenge"),
                    data.get("code_challenge_method"),
                )

            def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
                found = peer.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: _Code) -> None:
                peer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: _Code) -> str:
                return authorization_code.user

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # noqa: N802 - authlib's name
                return peer.rotate_refresh_tokens

            def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
                found = peer.refresh.get(refresh_token)
                return found if found and found.valid() else None

            def authenticate_user(self, refresh_token: _Token) -> str:
                return refresh_token.user

            def revoke_old_credential(self, refresh_token: _Token) -> None:
                if peer.rotate_refresh_tokens:
                    refresh_token.revoked = True

        class Revocation(RevocationEndpoint):
            CLIENT_AUTH_METHODS = AUTH_METHODS

            def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
                return peer.access.get(token_string) or peer.refresh.get(token_string)

            def revoke_token(self, token: _Token, req: Any) -> None:
                token.revoked = True

        class ClientCredentialsGrant(grants.ClientCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

        server.register_grant(CodeGrant, [_StrictPkce(required=True)])
        server.register_grant(RefreshGrant)
        server.register_grant(ClientCredentialsGrant)
        server.register_endpoint(Revocation)

        @app.route("/authorize")
        def authorize() -> Any:
            if request.args.get("deny"):
                grant = server.get_consent_grant(end_user=None)
                return server.create_authorization_response(grant=grant, grant_user=None)
            try:
                grant = server.get_consent_grant(end_user="alice")
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            return server.create_authorization_response(grant=grant, grant_user="alice")

        @app.route("/token", methods=["POST"])
        def token() -> Any:
            with peer._lock:
                peer.token_requests.append(
                    {"grant_type": request.form.get("grant_type", ""), **request.form}
                )
            time.sleep(peer.token_delay)
            if peer.token_outage:
                return "try later", 503
            return server.create_token_response()

        @app.route("/revoke", methods=["POST"])
        def revoke() -> Any:
            peer.revocations.append(dict(request.form))
            return server.create_endpoint_response("revocation")

        @app.route("/api/<path:path>", methods=["GET", "POST"])
        def api(path: str) -> Any:
            value = request.headers.get("Authorization", "").removeprefix("Bearer ")
            peer.api_requests.append(value)
            token = peer.access.get(value)
            if token is None or not token.valid():
                return jsonify(error="invalid_token"), 401, {"WWW-Authenticate": "Bearer"}
            return jsonify(login=token.user, path=path)

        return app

    def _query_client(self, client_id: str) -> _Client | None:
        return self.client if client_id == self.client.client_id else None

    def _save(self, token: dict[str, Any], req: Any) -> None:
        user = req.user
        scope = token.get("scope", "")
        self.access[token["access_token"]] = _Token(
            token["access_token"],
            req.client.client_id,
            scope,
            user,
            time.time() + int(token.get("expires_in", 3600)),
        )
        if token.get("refresh_token"):
            self.refresh[token["refresh_token"]] = _Token(
                token["refresh_token"], req.client.client_id, scope, user
            )

    def grant_types(self) -> list[str]:
        return [r["grant_type"] for r in self.token_requests]


# --- OpenID provider ---------------------------------------------------------------------


def rsa_key(kid: str) -> RSAKey:
    """A fresh 2048-bit RSA signing key with ``kid``."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class OidcProviderPeer:
    """An OpenID provider signing ID tokens with joserfc; see the module docstring."""

    client_id: str
    client_secret: str
    redirect_uri: str
    claims: dict[str, Any] = field(default_factory=dict)  # the signed-in user's claims
    overrides: dict[str, Any] = field(default_factory=dict)  # None removes a claim
    jwks_requests: int = 0
    token_requests: int = 0

    def __post_init__(self) -> None:
        self.signing_key = rsa_key("k1")
        self.published = [self.signing_key]
        self.codes: dict[str, dict[str, Any]] = {}
        self.claims = self.claims or {
            "sub": "user-1",
            "email": "ann@example.com",
            "email_verified": True,
            "groups": ["staff"],
        }
        self.served = _Served(self._build())
        self.issuer = self.served.url

    @property
    def url(self) -> str:
        return self.served.url

    def close(self) -> None:
        self.served.close()

    def _id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **self.claims,
            **self.overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": "RS256", "kid": self.signing_key.kid}
        return jwt.encode(header, claims, self.signing_key)

    def _build(self) -> Flask:
        peer = self
        app = Flask("openid-provider")

        @app.route("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=peer.issuer,
                authorization_endpoint=f"{peer.url}/authorize",
                token_endpoint=f"{peer.url}/token",
                jwks_uri=f"{peer.url}/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                code_challenge_methods_supported=["S256"],
            )

        @app.route("/jwks")
        def jwks() -> Any:
            peer.jwks_requests += 1
            return jsonify(keys=[key.as_dict(private=False) for key in peer.published])

        @app.route("/authorize")
        def authorize() -> Any:
            args = request.args
            if args.get("client_id") != peer.client_id or args.get("redirect_uri") != (
                peer.redirect_uri
            ):
                return "unknown client or redirect_uri", 400
            if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
                return "PKCE S256 required", 400
            if "openid" not in args.get("scope", "").split():
                return "scope openid required", 400
            code = secrets.token_urlsafe(16)
            peer.codes[code] = {"nonce": args.get("nonce", ""), "challenge": args["code_challenge"]}
            query = urlencode({"code": code, "state": args.get("state", "")})
            return redirect(f"{peer.redirect_uri}?{query}")

        @app.route("/token", methods=["POST"])
        def token() -> Any:
            peer.token_requests += 1
            auth = request.headers.get("Authorization", "")
            expected = base64.b64encode(f"{peer.client_id}:{peer.client_secret}".encode()).decode()
            if auth != f"Basic {expected}":
                return jsonify(error="invalid_client"), 401
            form = request.form
            code = peer.codes.pop(form.get("code", ""), None)
            if code is None or form.get("redirect_uri") != peer.redirect_uri:
                return jsonify(error="invalid_grant"), 400
            if create_s256_code_challenge(form.get("code_verifier", "")) != code["challenge"]:
                return jsonify(error="invalid_grant", error_description="PKCE failed"), 400
            return jsonify(
                access_token=generate_token(30),
                token_type="Bearer",
                expires_in=3600,
                id_token=peer._id_token(code["nonce"]),
            )

        return app


def follow_authorization(authorization_url: str) -> tuple[str, dict[str, str]]:
    """Play the user's browser at the provider: return the redirect's path+query and its query."""
    answer = requests.get(authorization_url, allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303), (answer.status_code, answer.text)
    location = urlsplit(answer.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    return f"{location.path}?{location.query}", query
