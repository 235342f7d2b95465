"""Outbound HTTP: the SSRF guard and the one pooled session every outbound call goes through."""
