"""Tandem's framework-free model core: task schemas, model ops, artifacts, registry, workflows, tenancy.

Nothing here imports LitServe, FastAPI or Dagster: the online servers and the batch assets
both wrap the very same ops.
"""
