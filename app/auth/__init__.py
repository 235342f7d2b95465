"""Authentication: API keys, passwords, and the per-request principal."""
