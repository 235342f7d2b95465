"""The console: ``/portal`` (a tenant's webhook pages, embeddable) and ``/console`` (operators
and tenant admins), server-rendered over the REST API (see docs/console.md)."""
