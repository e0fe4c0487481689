"""Tenant store: keys hashed at rest, authentication, rotation, atomic writes, reload on change.

The file, its parser and the store are `models.tenancy` (errors: TenancyError, UnknownTenantError);
the gateway adds 401/403 on top (`online.gateway.tenants`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from models import tenancy
from models.errors import TenancyError, UnknownTenantError
from online.gateway.problems import Forbidden, Unauthorized
from online.gateway.tenants import Tenant, TenantStore, api_key_from_headers, hash_key


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "tenants.yaml"


def test_create_returns_a_key_of_the_documented_shape_and_stores_only_its_hash(path: Path):
    store = TenantStore(path)
    tenant, key = store.create("acme", scopes={"predict", "jobs"}, rate_per_s=5, burst=10, daily_quota=100)
    assert re.fullmatch(r"tdm_[A-Za-z0-9_-]{32}", key)
    text = path.read_text()
    assert key not in text
    assert hash_key(key) in text
    assert tenant.key_hashes == [hash_key(key)]
    assert tenant.scopes == {"predict", "jobs"}
    assert tenant.retention_days == 30
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_second_store_on_the_same_file_reads_what_the_first_wrote(path: Path):
    TenantStore(path).create(
        "acme", scopes=["predict"], workflows=["classify"], model_pins={"sentiment": "3"}, daily_quota=7
    )
    other = TenantStore(path).get("acme")
    assert other.workflows == ["classify"]
    assert other.model_pins == {"sentiment": "3"}
    assert other.daily_quota == 7


def test_authenticate_finds_the_tenant_and_rejects_other_keys(path: Path):
    store = TenantStore(path)
    _, acme_key = store.create("acme")
    _, beta_key = store.create("beta")
    assert store.authenticate(acme_key).id == "acme"
    assert store.authenticate(beta_key).id == "beta"
    with pytest.raises(Unauthorized) as exc:
        store.authenticate("tdm_" + "x" * 32)
    assert "Authorization: Bearer <key>" in exc.value.detail and "X-API-Key" in exc.value.detail
    with pytest.raises(Unauthorized, match="missing"):
        store.authenticate(None)
    with pytest.raises(Unauthorized):
        store.authenticate(acme_key + "x" * 300)


def test_authenticate_compares_with_every_stored_hash(path: Path, monkeypatch: pytest.MonkeyPatch):
    store = TenantStore(path)
    _, key = store.create("acme")
    store.create("beta")
    store.rotate_key("beta", keep_old=True)
    calls = []
    real = tenancy.hmac.compare_digest
    monkeypatch.setattr(tenancy.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    store.authenticate(key)  # acme matches first, yet all three hashes are compared
    assert len(calls) == 3


def test_duplicate_tenant_is_a_tenancy_error_and_unknown_is_unknown_tenant(path: Path):
    store = TenantStore(path)
    store.create("acme")
    with pytest.raises(TenancyError, match="'acme' already exists"):
        store.create("acme")
    with pytest.raises(UnknownTenantError, match="'nobody'.*tandem tenants create nobody"):
        store.get("nobody")


def test_invalid_tenant_fields_are_rejected_with_the_tenant_and_field_named(path: Path):
    store = TenantStore(path)
    with pytest.raises(TenancyError, match=r"tenant 'acme' is invalid: field 'scopes\.0'"):
        store.create("acme", scopes={"root"})
    with pytest.raises(TenancyError, match="invalid tenant id"):
        store.create("Bad Id")
    with pytest.raises(TenancyError, match="field 'pii'"):
        store.create("acme", pii="shred")
    with pytest.raises(TenancyError, match="field 'max_in_flight'"):
        store.create("acme", max_in_flight=0)
    assert not path.exists()


def test_a_hand_edited_file_is_refused_naming_the_tenant_and_field(path: Path):
    path.parent.mkdir(parents=True)
    path.write_text("tenants:\n  acme: {rate_per_s: 5}\n  beta: {burst: 0}\n")
    with pytest.raises(TenancyError, match=r"tenant 'beta' is invalid: field 'burst'"):
        TenantStore(path)
    path.write_text("tenants:\n  acme: {rate_per_sec: 5}\n")  # a typo is not silently ignored
    with pytest.raises(TenancyError, match=r"tenant 'acme' is invalid: field 'rate_per_sec'"):
        TenantStore(path)
    path.write_text("tenants:\n  acme: {key_hashes: [tdm_plaintext]}\n")
    with pytest.raises(TenancyError, match="sha256 hex digests"):
        TenantStore(path)
    path.write_text("tenants: 42\n")
    with pytest.raises(TenancyError, match="expected a mapping"):
        tenancy.load_tenants(path)


def test_every_field_round_trips_with_its_documented_default(path: Path):
    store = TenantStore(path)
    tenant, _ = store.create("acme")
    assert (tenant.name, tenant.pii, tenant.max_in_flight, tenant.daily_quota, tenant.retention_days) == (
        "acme", "redact", None, None, 30)
    store.create("beta", pii="hash", max_in_flight=4, daily_quota=100, retention_days=7, model_pins={"m": "2"})
    again = tenancy.load_tenants(path)["beta"]
    assert (again.pii, again.max_in_flight, again.daily_quota, again.retention_days, again.model_pins) == (
        "hash", 4, 100, 7, {"m": "2"})


def test_update_changes_fields_but_never_keys(path: Path):
    store = TenantStore(path)
    _, key = store.create("acme")
    updated = store.update("acme", rate_per_s=50, daily_quota=None, pii="drop")
    assert (updated.rate_per_s, updated.pii) == (50, "drop")
    assert TenantStore(path).authenticate(key).id == "acme"
    with pytest.raises(TenancyError, match="field 'burst'"):
        store.update("acme", burst=-1)
    with pytest.raises(TenancyError, match="keys"):
        store.update("acme", key_hashes=[])
    with pytest.raises(UnknownTenantError):
        store.update("nobody", burst=2)


def test_the_gateway_store_hands_out_gateway_tenants_and_the_core_store_core_ones(path: Path):
    TenantStore(path).create("acme")
    assert type(TenantStore(path).get("acme")) is Tenant
    assert type(tenancy.TenantStore(path).get("acme")) is tenancy.Tenant


def test_rotate_key_rejects_the_old_key(path: Path):
    store = TenantStore(path)
    _, old = store.create("acme")
    new = store.rotate_key("acme")
    assert new != old
    assert store.authenticate(new).id == "acme"
    with pytest.raises(Unauthorized):
        store.authenticate(old)
    with pytest.raises(Unauthorized):
        TenantStore(path).authenticate(old)


def test_rotate_key_with_keep_old_accepts_both(path: Path):
    store = TenantStore(path)
    _, old = store.create("acme")
    new = store.rotate_key("acme", keep_old=True)
    assert store.authenticate(old).id == store.authenticate(new).id == "acme"


def test_delete_revokes_every_key(path: Path):
    store = TenantStore(path)
    _, key = store.create("acme")
    store.delete("acme")
    with pytest.raises(Unauthorized):
        store.authenticate(key)


def test_a_running_gateway_sees_a_tenant_created_by_the_cli(path: Path):
    clock = FakeClock()
    gateway = TenantStore(path, check_interval_s=1.0, clock=clock)
    assert gateway.list() == []
    _, key = TenantStore(path).create("acme")  # the CLI, another process
    assert gateway.reload_if_changed() is True  # first check is never throttled
    assert gateway.authenticate(key).id == "acme"

    TenantStore(path).create("beta")
    clock.t += 0.5
    assert gateway.reload_if_changed() is False  # throttled: no stat within the interval
    clock.t += 0.6
    assert gateway.reload_if_changed() is True
    assert [t.id for t in gateway.list()] == ["acme", "beta"]
    clock.t += 2
    assert gateway.reload_if_changed() is False  # unchanged file


def test_a_broken_file_keeps_the_last_good_tenants(path: Path, caplog: pytest.LogCaptureFixture):
    gateway = TenantStore(path, check_interval_s=0)
    _, key = gateway.create("acme")
    path.write_text("tenants: [this is: not valid")
    assert gateway.reload_if_changed() is False
    assert gateway.authenticate(key).id == "acme"
    assert "keeping the previous tenants" in caplog.text
    with pytest.raises(TenancyError, match="not valid YAML"):
        TenantStore(path)


def test_a_deleted_file_means_no_tenants(path: Path):
    gateway = TenantStore(path, check_interval_s=0)
    _, key = gateway.create("acme")
    os.unlink(path)
    assert gateway.reload_if_changed() is True
    with pytest.raises(Unauthorized):
        gateway.authenticate(key)


def test_writes_are_atomic_and_leave_no_temp_files(path: Path, monkeypatch: pytest.MonkeyPatch):
    store = TenantStore(path)
    store.create("acme")
    before = path.read_text()

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        store.create("beta")
    assert path.read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["tenants.yaml", "tenants.yaml.lock"]


def test_writer_starts_from_the_file_not_its_stale_memory(path: Path):
    a, b = TenantStore(path), TenantStore(path)
    a.create("acme")
    b.create("beta")  # b never reloaded, yet must not drop acme
    assert set(yaml.safe_load(path.read_text())["tenants"]) == {"acme", "beta"}


def test_require_scope_names_the_missing_scope():
    tenant = Tenant(id="acme", scopes={"predict"})
    tenant.require_scope("predict")
    with pytest.raises(Forbidden, match="'admin'"):
        tenant.require_scope("admin")


def test_require_workflow_honours_the_wildcard_and_the_list():
    Tenant(id="a").require_workflow("anything")
    limited = Tenant(id="b", workflows=["classify"])
    limited.require_workflow("classify")
    with pytest.raises(Forbidden, match="'summarise'"):
        limited.require_workflow("summarise")
    with pytest.raises(ValueError, match="not both"):
        Tenant(id="c", workflows=["*", "classify"])


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"Authorization": "Bearer tdm_abc"}, "tdm_abc"),
        ({"authorization": "bearer  tdm_abc "}, "tdm_abc"),
        ({"X-API-Key": "tdm_xyz"}, "tdm_xyz"),
        ({"Authorization": "Basic Zm9v", "x-api-key": "tdm_xyz"}, "tdm_xyz"),
        ({}, None),
    ],
)
def test_api_key_from_headers(headers: dict[str, str], key: str | None):
    assert api_key_from_headers(headers) == key
