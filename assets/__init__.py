"""Tandem assets."""
