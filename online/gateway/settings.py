"""Typed gateway settings (`TANDEM_GATEWAY_*` environment variables); read when asked."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Limits, timings and where the model servers are."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_GATEWAY_", extra="ignore", populate_by_name=True)

    servers: dict[str, str] = Field(default_factory=dict, description="Model name -> server base URL.")
    max_body_bytes: int = Field(default=1 << 20, description="Larger request bodies get 413.")
    max_job_body_bytes: int = Field(default=64 << 20, description="Body limit of POST /v1/jobs.")
    max_instances: int = Field(default=256, description="Most instances in one predict/embeddings call.")
    default_deadline_ms: int = Field(default=10_000, description="Deadline when neither header nor workflow sets one.")
    max_deadline_ms: int = Field(default=120_000, description="Upper bound on a caller's X-Deadline-Ms.")
    registry_poll_s: float = Field(default=1.0, description="How often registry changes are picked up.")
    cache_ttl_s: float = 300.0
    cache_max_entries: int = 50_000
    cache_max_bytes: int = 256 << 20
    idempotency_ttl_s: float = 24 * 3600
    log_enabled: bool = Field(default=True, description="Write every prediction to the Delta log.")
    log_flush_rows: int = 2000
    log_flush_s: float = Field(
        default=5.0, gt=0,
        description="Seconds between prediction-log and request-record writes (a Delta commit costs ~30 ms of CPU "
                    "however few its rows; records are answered from memory until written).")
    log_compact_every: int = Field(
        default=60, ge=0, description="Compact today's prediction-log files every N writes (0: never).")
    record_enabled: bool = Field(
        default=True, description="Keep one `requests` row per prediction request (GET /v1/requests/{id}).")
    lake_writer: Literal["process", "thread"] = Field(
        default="process",
        description="Where the prediction log and request record are built and written: a writer process of the "
                    "gateway's own (keeps that work off the GIL that serves requests) or a thread of the gateway.")
    shadow_concurrency: int = 8
    coalesce: bool = Field(default=True, description="Merge concurrent calls for one model version into one.")
    coalesce_max_instances: int = Field(default=64, ge=1, description="Most inputs in one merged call.")
    coalesce_max_inflight: int = Field(
        default=2, ge=1, description="Merged calls in flight per model version: 2 keeps the next batch queued at the server.")
    coalesce_window_ms: float = Field(
        default=2.0, ge=0, description="Under load, how long a merged call waits for the rest of its wave.")
    state_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TANDEM_STATE_URL", "TANDEM_GATEWAY_STATE_URL"),
        description="Shared state for several gateway replicas (redis://host:port/db); unset: in-process.")
    state_timeout_s: float = Field(
        default=0.5, gt=0, description="Longest wait for one shared-state call; past it limits fail open.")
    state_retry_s: float = Field(
        default=1.0, gt=0, description="After a shared-state failure, how long to skip it before trying again.")
    idempotency_lease_s: float | None = Field(
        default=None, gt=0,
        description="How long an in-flight Idempotency-Key stays claimed if its gateway dies (default: max deadline + 30 s).")
    tenant_max_in_flight: int | None = Field(
        default=64, ge=1, description="Requests one tenant may have in flight per gateway, unless its own max_in_flight says.")
    metrics_token: SecretStr | None = Field(
        default=None, description="When set, GET /metrics needs `Authorization: Bearer <token>` (else 401).")
    breaker_failures: int = 5
    breaker_reset_s: float = 5.0
