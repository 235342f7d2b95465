"""Rate limits: the Redis limiter, its enforcement on each request, and per-key usage counts."""
