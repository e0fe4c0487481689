"""Tenants: who may call what, how fast, how much per day, for how long their records are kept.

One parser for everyone: the gateway authenticates against it, the `tandem tenants` CLI writes
through it, and the retention asset reads `retention_days` from it. The file is YAML,
`tenants: {<id>: {...fields}}` (see docs/tenancy.md); only the sha256 of each API key is stored.
The plaintext (`tdm_` + 32 URL-safe characters) is shown once, when `create` or `rotate_key`
returns it. Writers take a lock file and replace the file atomically; a running reader picks
changes up with `reload_if_changed()`.

Errors are `models.errors.TenancyError` (invalid configuration, naming the tenant and field) and
`UnknownTenantError`; what an HTTP caller sees (401/403/404) is the gateway's business.
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.errors import TenancyError, UnknownTenantError

__all__ = [
    "KEY_PREFIX",
    "MAX_KEY_LENGTH",
    "PII_POLICIES",
    "SCOPES",
    "PiiPolicy",
    "Scope",
    "Tenant",
    "TenantStore",
    "hash_key",
    "load_tenants",
    "new_key",
    "parse_tenants",
]

logger = logging.getLogger(__name__)

Scope = Literal["predict", "jobs", "admin"]
SCOPES: tuple[str, ...] = ("predict", "jobs", "admin")
PiiPolicy = Literal["keep", "redact", "hash", "drop"]
PII_POLICIES: tuple[str, ...] = ("keep", "redact", "hash", "drop")
KEY_PREFIX = "tdm_"
MAX_KEY_LENGTH = 256
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Tenant(BaseModel):
    """A tenant: what it may call, how fast, how much per day, and the hashes of its keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str = ""
    scopes: set[Scope] = Field(default_factory=lambda: {"predict"})
    workflows: list[str] = Field(default_factory=lambda: ["*"])
    model_pins: dict[str, str] = Field(default_factory=dict)
    rate_per_s: float = Field(default=10.0, gt=0, description="Token-bucket refill, requests per second.")
    burst: int = Field(default=20, ge=1, description="Token-bucket size.")
    daily_quota: int | None = Field(default=None, ge=0, description="Requests per UTC day; None: unlimited.")
    max_in_flight: int | None = Field(
        default=None, ge=1, description="Requests in flight at once per gateway; None: the gateway's default.")
    retention_days: int = Field(default=30, ge=1)
    pii: PiiPolicy = Field(default="redact", description="What the request log keeps of inputs.")
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

    @field_validator("key_hashes")
    @classmethod
    def _check_hashes(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not re.fullmatch(r"[0-9a-f]{64}", h)]
        if bad:
            raise ValueError("key_hashes holds sha256 hex digests (64 lowercase hex characters), never keys")
        return v

    def allows_workflow(self, name: str) -> bool:
        return "*" in self.workflows or name in self.workflows


def new_key() -> str:
    """A fresh API key: `tdm_` and 32 URL-safe characters (192 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The sha256 hex digest stored for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_tenants(doc: Any, *, source: str = "tenant file", tenant_type: type[Tenant] = Tenant) -> dict[str, Tenant]:
    """`{id: Tenant}` from a parsed YAML document `{tenants: {<id>: {...}}}`; `TenancyError` naming
    the tenant and field of the first invalid entry."""
    if doc is None:
        return {}
    raw = doc.get("tenants") if isinstance(doc, dict) else doc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TenancyError(f"{source}: expected a mapping `tenants: {{<id>: {{...fields}}}}`")
    tenants: dict[str, Tenant] = {}
    for tid, fields in raw.items():
        if fields is not None and not isinstance(fields, dict):
            raise TenancyError(f"{source}: tenant {tid!r} must be a mapping of fields, got {type(fields).__name__}")
        tenants[str(tid)] = _build(tenant_type, source, {**(fields or {}), "id": str(tid)})
    return tenants


def load_tenants(path: Path, *, tenant_type: type[Tenant] = Tenant) -> dict[str, Tenant]:
    """The tenants of the file at `path` ({} when it does not exist)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TenancyError(f"{path} is not valid YAML: {exc}") from None
    return parse_tenants(doc, source=str(path), tenant_type=tenant_type)


class TenantStore:
    """Tenants in a YAML file; reads are in memory, writes atomic and serialised by a lock file.

    `tenant_type` lets an adapter (the gateway) hand out its own subclass of `Tenant`.
    """

    tenant_type: ClassVar[type[Tenant]] = Tenant

    def __init__(
        self, path: Path, *, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ):
        self.path = Path(path)
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._checked_at: float | None = None
        self._tenants, self._stamp = self._read()  # a broken file fails here, loudly

    # --- reads -----------------------------------------------------------------------------

    def list(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.id)

    def get(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise UnknownTenantError(
                f"no tenant {tenant_id!r}; create it with `tandem tenants create {tenant_id}`"
            ) from None

    def find_by_key(self, key: str | None) -> Tenant | None:
        """The tenant holding `key`, or None; compares its hash with every stored hash in constant time."""
        if not key:
            return None
        digest = hash_key(key[:MAX_KEY_LENGTH]).encode()
        found: Tenant | None = None
        for tenant in self._tenants.values():
            for stored in tenant.key_hashes:
                # No early exit: the time taken does not depend on which hash (if any) matched.
                if hmac.compare_digest(digest, stored.encode()) and found is None:
                    found = tenant
        return None if len(key) > MAX_KEY_LENGTH else found

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
        except TenancyError as exc:
            self._stamp = stamp  # don't re-parse (and re-log) until the file changes again
            logger.error("keeping the previous tenants: %s", exc)
            return False
        logger.info("reloaded %d tenants from %s", len(self._tenants), self.path)
        return True

    # --- writes (the CLI's side) -----------------------------------------------------------

    def create(self, tenant_id: str, **fields: Any) -> tuple[Tenant, str]:
        """Add a tenant with one new key; returns the tenant and the key's plaintext (shown once).

        `fields` are the tenant's fields (docs/tenancy.md); `name` defaults to the id.
        """
        key = new_key()
        if "key_hashes" in fields:
            raise TenancyError("create issues the key itself; do not pass key_hashes")
        with self._locked():
            if tenant_id in self._tenants:
                raise TenancyError(
                    f"tenant {tenant_id!r} already exists; use `tandem tenants rotate-key {tenant_id}` "
                    "to give it a new key, or `tandem tenants update` to change it"
                )
            fields = {k: v for k, v in fields.items() if v is not None}  # None: the field's default
            fields.setdefault("name", tenant_id)
            tenant = _build(self.tenant_type, "new tenant", {**fields, "id": tenant_id, "key_hashes": [hash_key(key)]})
            self._write({**self._tenants, tenant_id: tenant})
        return tenant, key

    def update(self, tenant_id: str, **changes: Any) -> Tenant:
        """Change some fields of a tenant (not its keys: see `rotate_key`)."""
        if "key_hashes" in changes or "id" in changes:
            raise TenancyError("update cannot change a tenant's id or keys; use rotate_key for keys")
        with self._locked():
            current = self.get(tenant_id)
            tenant = _build(self.tenant_type, "tenant update", {**current.model_dump(), **changes})
            self._write({**self._tenants, tenant_id: tenant})
        return tenant

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
        return load_tenants(self.path, tenant_type=self.tenant_type), stamp

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


def _build(tenant_type: type[Tenant], source: str, fields: Mapping[str, Any]) -> Tenant:
    try:
        return tenant_type(**fields)
    except ValidationError as exc:
        raise TenancyError(f"{source}: tenant {fields.get('id')!r} is invalid: {_describe(exc)}") from None


def _to_yaml(tenant: Tenant) -> dict[str, Any]:
    d = tenant.model_dump(exclude={"id"})
    d["scopes"] = sorted(d["scopes"])
    return d


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        field = ".".join(map(str, e["loc"])) or "tenant"
        parts.append(f"field {field!r}: {e['msg']}")
    return "; ".join(parts)
