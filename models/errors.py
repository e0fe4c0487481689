"""Exceptions raised by the model core.

    TandemModelError
    ├── SchemaError                 input/output does not match a task's schema
    ├── UnknownTaskError            no task of that name
    ├── ArtifactError               an artifact is missing or malformed
    │   └── DigestMismatchError     an artifact's sha256 differs from the recorded one
    ├── RegistryError
    │   ├── UnknownModelError       no model of that name
    │   ├── UnknownVersionError     no such version (or alias) of a model
    │   ├── SchemaHashMismatchError a version's schema hash differs from its task's contract
    │   ├── InvalidRegistryOperation  e.g. canary weight outside [0, 1], rollback with no history
    │   └── UnevaluatedVersionError   no passing offline evaluation: refused before traffic (models.gate)
    ├── WorkflowError               a workflow spec is invalid (names the step) or unknown
    └── TenancyError                tenant configuration is invalid, or no tenant of that name
        └── UnknownTenantError      no tenant of that name
"""

from __future__ import annotations


class TandemModelError(Exception):
    """Base of every error raised by `models`."""


class SchemaError(TandemModelError):
    """An input or output does not match its task's schema."""


class UnknownTaskError(TandemModelError):
    """No task of that name is defined."""


class ArtifactError(TandemModelError):
    """An artifact is missing or malformed."""


class DigestMismatchError(ArtifactError):
    """An artifact's content does not hash to the recorded sha256."""


class RegistryError(TandemModelError):
    """A registry operation failed."""


class UnknownModelError(RegistryError):
    """No model of that name is registered."""


class UnknownVersionError(RegistryError):
    """No such version or alias of a model."""


class SchemaHashMismatchError(RegistryError):
    """A version's schema hash differs from its task's current contract."""


class InvalidRegistryOperation(RegistryError):
    """The operation is not allowed in the registry's current state."""


class UnevaluatedVersionError(RegistryError):
    """A version has no passing offline evaluation, so it may not take traffic (unless forced with a reason)."""


class WorkflowError(TandemModelError):
    """A workflow spec is invalid, or no workflow of that name exists."""


class TenancyError(TandemModelError):
    """Tenant configuration is invalid (names the tenant and field), or a tenant operation failed."""


class UnknownTenantError(TenancyError):
    """No tenant of that name exists."""
