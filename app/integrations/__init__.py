"""Integrations resource."""
