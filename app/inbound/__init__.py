"""Signed inbound webhooks from providers (GitHub, Slack, …)."""
