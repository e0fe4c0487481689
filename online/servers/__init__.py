"""Tandem online/servers."""
