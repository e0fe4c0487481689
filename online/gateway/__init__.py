"""Tandem online/gateway."""
