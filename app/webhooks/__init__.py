"""Webhook endpoints, signing, and delivery."""
