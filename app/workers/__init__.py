"""The worker process: RQ's loop kept alive through store outages, and worker liveness."""
