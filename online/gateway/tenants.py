"""Tenants and their API keys, kept in `tenants.yaml` under TANDEM_HOME.

Only the sha256 of each key is stored; the plaintext (`tdm_` + 32 URL-safe characters) is shown
once, when `create` or `rotate_key` returns it. The CLI writes the file (atomically, under a lock
file) and a running gateway picks changes up with `reload_if_changed()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from online.gateway.problems import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "Scope",
    "Tenant",
    "TenantStore",
    "api_key_from_headers",
    "hash_key",
    "new_key",
]

logger = logging.getLogger(__name__)

Scope = Literal["predict", "jobs", "admin"]
SCOPES: tuple[str, ...] = ("predict", "jobs", "admin")
KEY_PREFIX = "tdm_"
_MAX_KEY_LEN = 256
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOW_TO_AUTH = "pass your API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class Tenant(BaseModel):
    """A tenant: what it may call, how fast, how much per day, and the hashes of its keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str = ""
    scopes: set[Scope] = Field(default_factory=lambda: {"predict"})
    workflows: list[str] = Field(default_factory=lambda: ["*"])
    model_pins: dict[str, str] = Field(default_factory=dict)
    rate_per_s: float = Field(default=10.0, gt=0)
    burst: int = Field(default=20, ge=1)
    daily_quota: int | None = Field(default=None, ge=0)
    retention_days: int = Field(default=30, ge=1)
    key_hashes: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(
                f"invalid tenant id {v!r}: use 1-63 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("workflows")
    @classmethod
    def _check_workflows(cls, v: list[str]) -> list[str]:
        if "*" in v and len(v) > 1:
            raise ValueError("workflows is either ['*'] (all) or a list of workflow names, not both")
        return v

    def allows_workflow(self, name: str) -> bool:
        return "*" in self.workflows or name in self.workflows

    def require_scope(self, scope: str) -> None:
        """Raise `Forbidden` naming `scope` unless this tenant holds it."""
        if scope not in self.scopes:
            held = ", ".join(sorted(self.scopes)) or "none"
            raise Forbidden(
                f"tenant {self.id!r} lacks the {scope!r} scope (it holds: {held}); "
                "ask an administrator to grant it"
            )

    def require_workflow(self, name: str) -> None:
        """Raise `Forbidden` unless this tenant may run workflow `name`."""
        if not self.allows_workflow(name):
            raise Forbidden(
                f"tenant {self.id!r} may not run workflow {name!r}; "
                f"it may run: {', '.join(self.workflows) or 'none'}"
            )


def new_key() -> str:
    """A fresh API key: `tdm_` and 32 URL-safe characters (192 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The sha256 hex digest stored for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or, failing that, `X-API-Key` (case-insensitive names)."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = lower.get("x-api-key", "").strip()
    return api_key or None


class TenantStore:
    """Tenants in a YAML file: `tenants: {<id>: {...fields}}`; reads are in memory, writes atomic."""

    def __init__(
        self, path: Path, *, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ):
        self.path = Path(path)
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._tenants: dict[str, Tenant] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._tenants, self._stamp = self._read()  # a broken file fails here, loudly

    # --- reads -----------------------------------------------------------------------------

    def list(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.id)

    def get(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise NotFound(
                f"no tenant {tenant_id!r}; create it with `tandem tenants create {tenant_id}`"
            ) from None

    def authenticate(self, key: str | None) -> Tenant:
        """The tenant holding `key`, comparing its hash with every stored hash in constant time."""
        if not key:
            raise Unauthorized(f"missing API key: {_HOW_TO_AUTH}")
        digest = hash_key(key[:_MAX_KEY_LEN]).encode()
        found: Tenant | None = None
        for tenant in self._tenants.values():
            for stored in tenant.key_hashes:
                # No early exit: the time taken does not depend on which hash (if any) matched.
                if hmac.compare_digest(digest, stored.encode()) and found is None:
                    found = tenant
        if found is None or len(key) > _MAX_KEY_LEN:
            raise Unauthorized(f"invalid API key: {_HOW_TO_AUTH}")
        return found

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the file if its mtime/size/inode changed; at most every `check_interval_s`.

        A file that no longer parses is logged and ignored (the last good tenants stay), so a
        typo made by hand does not lock every tenant out of a running gateway.
        """
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self._check_interval_s:
            return False
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            self._tenants, self._stamp = self._read()
        except ValueError as exc:
            self._stamp = stamp  # don't re-parse (and re-log) until the file changes again
            logger.error("keeping the previous tenants: %s", exc)
            return False
        logger.info("reloaded %d tenants from %s", len(self._tenants), self.path)
        return True

    # --- writes (the CLI's side) -----------------------------------------------------------

    def create(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] = ("predict",),
        workflows: Iterable[str] = ("*",),
        rate_per_s: float = 10.0,
        burst: int = 20,
        daily_quota: int | None = None,
        model_pins: Mapping[str, str] | None = None,
        retention_days: int = 30,
    ) -> tuple[Tenant, str]:
        """Add a tenant with one new key; returns the tenant and the key's plaintext (shown once)."""
        key = new_key()
        with self._locked():
            if tenant_id in self._tenants:
                raise Conflict(
                    f"tenant {tenant_id!r} already exists; use `rotate_key` to give it a new key"
                )
            try:
                tenant = Tenant(
                    id=tenant_id,
                    name=name or tenant_id,
                    scopes=set(scopes),
                    workflows=list(workflows),
                    model_pins=dict(model_pins or {}),
                    rate_per_s=rate_per_s,
                    burst=burst,
                    daily_quota=daily_quota,
                    retention_days=retention_days,
                    key_hashes=[hash_key(key)],
                )
            except ValidationError as exc:
                errors = [{"field": _loc(e), "message": e["msg"]} for e in exc.errors()]
                raise InvalidInput(errors, f"invalid tenant {tenant_id!r}: {_describe(exc)}") from None
            self._write({**self._tenants, tenant_id: tenant})
        return tenant, key

    def rotate_key(self, tenant_id: str, keep_old: bool = False) -> str:
        """Issue a new key; old keys stop working unless `keep_old` (for a rollover window)."""
        key = new_key()
        with self._locked():
            tenant = self.get(tenant_id)
            hashes = [*tenant.key_hashes, hash_key(key)] if keep_old else [hash_key(key)]
            self._write({**self._tenants, tenant_id: tenant.model_copy(update={"key_hashes": hashes})})
        return key

    def delete(self, tenant_id: str) -> None:
        """Remove a tenant and with it all its keys."""
        with self._locked():
            self.get(tenant_id)
            self._write({k: v for k, v in self._tenants.items() if k != tenant_id})

    # --- file handling ---------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> tuple[dict[str, Tenant], tuple[int, int, int] | None]:
        stamp = self._file_stamp()
        if stamp is None:
            return {}, None
        text = self.path.read_text(encoding="utf-8")
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{self.path} is not valid YAML: {exc}") from None
        raw = doc.get("tenants") if isinstance(doc, dict) else None
        if not isinstance(raw, dict) and raw is not None:
            raise ValueError(f"{self.path}: expected a mapping `tenants: {{<id>: {{...}}}}`")
        tenants: dict[str, Tenant] = {}
        for tid, fields in (raw or {}).items():
            try:
                tenants[str(tid)] = Tenant(id=str(tid), **(fields or {}))
            except (ValidationError, TypeError) as exc:
                detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
                raise ValueError(f"{self.path}: tenant {tid!r} is invalid: {detail}") from None
        return tenants, stamp

    def _write(self, tenants: dict[str, Tenant]) -> None:
        doc = {"tenants": {tid: _to_yaml(t) for tid, t in sorted(tenants.items())}}
        text = "# Managed by `tandem tenants`; keys are stored as sha256 hashes only.\n"
        text += yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tenants-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._tenants, self._stamp = tenants, self._file_stamp()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers across processes, and start from the file's current content."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._tenants, self._stamp = self._read()
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _to_yaml(tenant: Tenant) -> dict[str, Any]:
    d = tenant.model_dump(exclude={"id"})
    d["scopes"] = sorted(d["scopes"])
    return d


def _loc(error: Any) -> str:
    return ".".join(map(str, error["loc"])) or "tenant"


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{_loc(e)}: {e['msg']}" for e in exc.errors())
