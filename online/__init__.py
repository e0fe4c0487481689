"""Tandem online."""
