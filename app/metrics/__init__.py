"""Prometheus metrics: instruments and their hooks, request metrics, ``GET /metrics``."""
