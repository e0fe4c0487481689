"""Tandem orchestration."""
