"""The gateway's view of tenants: the core tenant file (`models.tenancy`) plus the HTTP answers.

Parsing, validation, key hashing and the file itself belong to `models.tenancy`; this module
only adds what a request needs: `authenticate` (401 for a missing or unknown key) and
`require_scope` / `require_workflow` (403), so auth errors stay gateway errors.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.tenancy import KEY_PREFIX, SCOPES, Scope, hash_key, new_key
from models.tenancy import Tenant as CoreTenant
from models.tenancy import TenantStore as CoreTenantStore
from online.gateway.problems import Forbidden, Unauthorized

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

_HOW_TO_AUTH = "pass your API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class Tenant(CoreTenant):
    """A core tenant that answers 403 when a request asks for more than it holds."""

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


class TenantStore(CoreTenantStore):
    """The core tenant store, handing out gateway `Tenant`s, with a 401-raising `authenticate`."""

    tenant_type = Tenant

    def authenticate(self, key: str | None) -> Tenant:
        """The tenant holding `key` (hashes compared in constant time); `Unauthorized` otherwise."""
        if not key:
            raise Unauthorized(f"missing API key: {_HOW_TO_AUTH}")
        found = self.find_by_key(key)
        if found is None:
            raise Unauthorized(f"invalid API key: {_HOW_TO_AUTH}")
        return found  # type: ignore[return-value]


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or, failing that, `X-API-Key` (case-insensitive names)."""
    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = lower.get("x-api-key", "").strip()
    return api_key or None
