"""Connector catalog and action jobs resources."""
