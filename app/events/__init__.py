"""Events: the catalog, the transactional outbox, dispatch to webhooks and connector
subscriptions, the reconciler, and the publish API."""
