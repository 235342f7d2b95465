"""OAuth2 connections and SSO login: PKCE, single-use state, encrypted tokens, refresh, OIDC.

``connections`` runs the authorize → callback flow of ``oauth2`` integrations and ``tokens``
keeps their token sets (encrypted, refreshed under a Redis lock); ``sso`` signs Switchboard's
own users in through ``oidc`` integrations, ``idtoken`` validating their ID tokens.
"""
