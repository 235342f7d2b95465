"""Integration logs and the audit log."""
