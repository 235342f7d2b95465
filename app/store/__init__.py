"""Durable and shared state: the database and its models and migrations, Redis, RQ queues,
and secrets at rest."""
